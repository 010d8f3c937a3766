"""Replication: the source's WAL, read from its slot, into the shape logs.

A change flows through the modules in this order::

    slot -> stream --raw XLogData--> assembler --(changes per shape, xid, lsn)--> replicator
                                     pgoutput: Begin/Commit read   transactions.sort_out: park,
                                     raw, rows probed or decoded;  skip or append; flush,
                                     shapes.router: which shapes   publish, then ack

- `wal`: `Lsn` and `Xid`, and the ``X/Y`` text form of an LSN.
- `slot`: create the slot, read where it resumes.
- `stream`: one ``START_REPLICATION`` session read in batches; it confirms only what the
  caller says is durable.
- `pgoutput`: the wire format, known nowhere else: the full decoder, and the raw readers
  of the fast path (most messages are never decoded).
- `assembler`: raw messages -> each committed transaction's changes, per shape.
- `transactions`: what becomes of a transaction per shape (parked, replayed, already in
  the snapshot, appended) and how far the slot may be confirmed (pure).
- `failures`: which failures need someone to fix something, and the reconnect backoff (pure).
- `replicator`: the loop: reconnect, read, apply, fsync, publish, ack; pause while shape
  logs cannot be written.
"""
