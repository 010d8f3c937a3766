"""shapegate's sync engine: Electric's HTTP Shape API served from Postgres logical replication."""

__version__ = "0.1.0"
