"""The catch-up cache lifetimes an operator sets, under our names and under Electric's.

Electric deployments set ELECTRIC_CACHE_MAX_AGE / ELECTRIC_CACHE_STALE_AGE (its own test
server runs with 1 and 3 behind a caching nginx); the engine reads them when its own
SYNC_ENGINE_* variable is unset, and a flag still wins over both.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import psycopg
import pytest

from sync_engine.__main__ import build_parser
from tests.support.engine_process import EngineProcess

ELECTRIC_VARS = (
    "ELECTRIC_CACHE_MAX_AGE",
    "ELECTRIC_CACHE_STALE_AGE",
    "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD",
    "SYNC_ENGINE_MAX_AGE",
    "SYNC_ENGINE_STALE_AGE",
    "SYNC_ENGINE_CHUNK_BYTES",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ELECTRIC_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_electric_variables_set_the_cache_lifetimes(clean_env: pytest.MonkeyPatch) -> None:
    assert (build_parser().parse_args([]).max_age, build_parser().parse_args([]).stale_age) == (
        60,
        300,
    )
    clean_env.setenv("ELECTRIC_CACHE_MAX_AGE", "1")
    clean_env.setenv("ELECTRIC_CACHE_STALE_AGE", "3")
    clean_env.setenv("ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", "10000")
    args = build_parser().parse_args([])
    assert (args.max_age, args.stale_age, args.chunk_bytes) == (1, 3, 10000)


def test_our_variable_then_the_flag_win_over_electrics(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ELECTRIC_CACHE_MAX_AGE", "1")
    clean_env.setenv("SYNC_ENGINE_MAX_AGE", "7")
    assert build_parser().parse_args([]).max_age == 7
    assert build_parser().parse_args(["--max-age", "9"]).max_age == 9


def test_a_bad_electric_value_is_one_line_naming_it(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("ELECTRIC_CACHE_STALE_AGE", "soon")
    with pytest.raises(SystemExit) as exc:
        build_parser()
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ELECTRIC_CACHE_STALE_AGE='soon'" in err and "--stale-age" in err


async def test_engine_started_with_electrics_variables_sends_their_lifetimes(
    db_url: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    clean_env.setenv("ELECTRIC_CACHE_MAX_AGE", "1")
    clean_env.setenv("ELECTRIC_CACHE_STALE_AGE", "3")
    engine = EngineProcess(db_url, tmp_path / "data", "--no-fsync")
    engine.start()
    try:
        async with aiohttp.ClientSession() as s:
            url = engine.url + "/v1/shape"
            async with s.get(url, params={"table": "items", "offset": "-1"}) as r:
                assert r.status == 200
                handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
                # The initial chunk keeps its own long lifetime, as Electric's does.
                assert r.headers["cache-control"].startswith("public, max-age=604800")
            params = {"table": "items", "offset": offset, "handle": handle}
            async with s.get(url, params=params) as r:
                assert r.status == 200
                assert "electric-up-to-date" in r.headers
                assert r.headers["cache-control"] == "public, max-age=1, stale-while-revalidate=3"
                tag = r.headers["etag"]
            # What a cache does once max-age is over: revalidate; unchanged, so 304.
            async with s.get(url, params=params, headers={"if-none-match": tag}) as r:
                assert r.status == 304
                assert r.headers["cache-control"] == "public, max-age=1, stale-while-revalidate=3"
    finally:
        engine.stop()
