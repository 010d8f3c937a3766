"""A registered source runs with the engine's settings, as the database-mode source does.

`SourceManager._config` passed only some of them: `--catalog-timeout`, `--probe-timeout`
and `--family-check-interval` were ignored for every registered source (each ran with the
defaults), which the database-mode source (sync_engine/app.py) honours.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sync_engine.settings import Settings
from sync_engine.source import SourceConfig
from sync_engine.tenants.manager import SourceManager
from sync_engine.tenants.store import SourceRecord

#: SourceConfig fields a registered source takes from elsewhere than the same-named setting.
OWN = {"source_id", "database_url", "data_dir", "max_shapes", "stream_id"}


def test_every_setting_a_source_has_reaches_a_registered_source(tmp_path: Path) -> None:
    shared = [
        f
        for f in dataclasses.fields(SourceConfig)
        if f.name not in OWN and hasattr(Settings, f.name)
    ]
    assert {f.name for f in shared} >= {"catalog_timeout", "probe_timeout", "snapshot_timeout"}
    changed: dict[str, Any] = {}
    for f in shared:
        default = getattr(Settings(), f.name)
        if isinstance(default, bool):
            changed[f.name] = not default
        else:  # (None: a default of its own, e.g. --max-log-bytes: auto)
            changed[f.name] = 4097 if default is None else default * 3 + 1
    settings = dataclasses.replace(Settings(data_dir=tmp_path), **changed)
    rec = SourceRecord(source_id="s1", name="one", database_url="postgresql://x/y", secret_hash="h")
    config = SourceManager(settings)._config(rec)
    assert {n: getattr(config, n) for n in changed} == changed
