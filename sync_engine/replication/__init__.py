"""Replication: the source's WAL, read from its slot, into the shape logs."""
