"""`--subset-spool-budget` (env SYNC_ENGINE_SUBSET_SPOOL_BUDGET): the bytes all subset
answers may hold at once. It was a constant (1 GiB) no deployment could change: one with
little disk or memory could not lower it. The flag reaches the budget the subset answers
are measured against: an answer bigger than it alone is the 400 that names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sync_engine.__main__ import build_parser, settings_from_args
from sync_engine.app import SOURCES, build_app
from sync_engine.snapshot import subset as subset_module
from tests.sync_engine.engine_harness import Engine


def test_the_flag_and_its_variable_are_read_and_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SYNC_ENGINE_SUBSET_SPOOL_BUDGET", raising=False)
    assert build_parser().parse_args([]).subset_spool_budget == 1 << 30
    monkeypatch.setenv("SYNC_ENGINE_SUBSET_SPOOL_BUDGET", "3000")
    assert build_parser().parse_args([]).subset_spool_budget == 3000
    args = build_parser().parse_args(["--subset-spool-budget", "2000"])
    assert settings_from_args(args).subset_spool_budget == 2000
    for bad in ("0", "-1", "lots"):  # (0 would refuse every subset)
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--subset-spool-budget", bad])
    monkeypatch.setenv("SYNC_ENGINE_SUBSET_SPOOL_BUDGET", "0")
    with pytest.raises(SystemExit):
        build_parser()
    assert "SYNC_ENGINE_SUBSET_SPOOL_BUDGET" in capsys.readouterr().err


async def test_an_engine_started_with_the_flag_measures_subsets_against_it(
    aiohttp_client: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNC_ENGINE_SUBSET_SPOOL_BUDGET", raising=False)
    monkeypatch.setattr(subset_module.BUDGET, "limit", subset_module.BUDGET.limit)  # (restored)
    args = build_parser().parse_args(
        [
            f"--database-url={db_url}",
            f"--data-dir={tmp_path / 'data'}",
            "--no-fsync",
            "--subset-spool-budget=2000",
        ]
    )
    client = await aiohttp_client(build_app(settings_from_args(args)))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 100) g")
    _, handle, offset = await engine.sync(table="items", log="changes_only")
    path = f"/v1/shape?table=items&log=changes_only&handle={handle}&offset={offset}"
    small = await client.post(path, json={"where": "id <= 2"})
    assert small.status == 200, await small.text()
    big = await client.post(path, json={"where": "true"})  # (~13 KB of rows)
    assert big.status == 400, await big.text()
    assert "over 2000 bytes" in (await big.json())["errors"]["subset"]["where"][0]
