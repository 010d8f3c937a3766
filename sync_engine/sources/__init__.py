"""Registered sources: many Postgres databases served by one engine.

registry.py   SQLite store in <data-dir>/sources.db: id, name, URL, secret hashes, state
secrets.py    new secrets, their salted scrypt hashes, constant-time verification
auth.py       source_id + secret on each /v1/shape request -> the source, or 401
diagnose.py   a Postgres error -> a reason a person can act on (pure)
managed.py    ManagedSource: a Source with per-source limits and replication lag
manager.py    SourceManager: registry + running sources; create/rotate/pause/delete
cli.py        `sync-engine sources ...`, a client of the admin API
"""
