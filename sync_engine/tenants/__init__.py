"""Tenants: the registered sources, many Postgres databases served by one engine.

Each one is a `sync_engine.source.Source` (as the single database of `--database-url` is);
this package registers them, authenticates their requests and runs them.

store.py      SQLite store in <data-dir>/sources.db: id, name, URL, secret hashes, state;
              deleted sources' ids (and URLs until their slot is dropped)
credentials.py new secrets, their salted hashes (SHA-256; scrypt before schema 4),
              constant-time verification
dburl.py      connection strings checked and redacted (passwords never shown)
auth.py       source_id + secret on each /v1/shape request -> the source, or 401;
              scrypt checks take turns by source, bounded (503 past the bound)
diagnose.py   a Postgres error -> a reason a person can act on (pure)
managed.py    ManagedSource: a Source with per-source limits and replication lag, and the
              requests it serves (ended when it is paused or deleted, or their secret
              is revoked)
manager.py    SourceManager: store + running sources; create/rotate/pause/delete;
              retries dropping a deleted source's slot and publication
errors.py     SourceError tree (unknown source, duplicate name, invalid input)
cli.py        `sync-engine sources ...`, a client of the admin API
"""
