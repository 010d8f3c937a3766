"""Whole-table lines as pre-images (snapshot/query.py `json_from_raw`): Postgres sends every
value's text unescaped and the engine escapes whole lines. The entries must be byte for byte
what the row-by-row query gives (`to_json` of each value's text, Postgres's own escaping),
for every type, every character, NULLs, both line forms and both backends."""

from __future__ import annotations

import logging
import random
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import AsyncConnection, pq, sql
from psycopg.conninfo import make_conninfo

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.snapshot.batch import SnapshotJob, run_batch
from sync_engine.snapshot.bulk import Split
from sync_engine.snapshot.query import json_from_raw, row_json_sql
from tests.support.databases import drop_database

CHUNK = 50_000
END = b',{"headers":{"control":"snapshot-end"'


def escape_json(text: str) -> bytes:
    """Postgres's `escape_json` (src/backend/utils/adt/json.c), written out."""
    named = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return ('"' + "".join(out) + '"').encode()


def test_a_value_is_escaped_as_postgres_escapes_it() -> None:
    """Every ASCII character, the bytes UTF-8 text never holds next to ones it does, and
    random strings, between the constant parts (a `"` in the pre-image is the value's)."""
    rng = random.Random(13)
    alphabet = [chr(c) for c in range(1, 128)] + ["é", "€", "\u2028", "\ufffe", "\U0001f600"]
    texts = ["", '"', "\\", '\\"', "\\u0001", "\x7f", "".join(alphabet)]
    texts += ["".join(rng.choices(alphabet, k=rng.randrange(40))) for _ in range(2000)]
    quote = b"\xff"  # a structural `"` in the pre-image
    raw = b",".join(quote + t.encode() + quote for t in texts)
    assert json_from_raw(raw) == b",".join(escape_json(t) for t in texts)
    assert json_from_raw(raw) == b",".join(orjson.dumps(t) for t in texts)
    assert json_from_raw(b"\xff\xfe\xfc\xfb") == b'"\\\x1f\x1e'  # the constants' own bytes
    null = b"\xff\xfa\xff"  # a NULL: its marker between the quotes every value has
    assert json_from_raw(b"{\xffa\xff:" + null + b",\xffb\xff:\xffx\xff}") == b'{"a":null,"b":"x"}'


TYPES = """
CREATE TYPE mood AS ENUM ('ok', 'not "ok"', 'back\\slash');
CREATE DOMAIN shout AS text CHECK (VALUE <> 'quiet');
CREATE TYPE pair AS (a text, b int);
CREATE TABLE every (
  id int PRIMARY KEY, t text, vc varchar(50), ch char(4), nm name, b bool, i2 int2, i8 int8,
  f4 float4, f8 float8, n numeric, money money, ts timestamptz, tsn timestamp, d date, tm time,
  tz timetz, iv interval, u uuid, j jsonb, js json, arr int[], tarr text[], jarr jsonb[],
  ine inet, cidr cidr, mac macaddr, by bytea, bits varbit, e mood, sh shout, p pair,
  r int4range, pt point, tsv tsvector, x xml, pad text NOT NULL
)
"""
ROWS = r"""
INSERT INTO every
SELECT g,
  CASE WHEN g % 11 = 0 THEN NULL
       ELSE 'a\b "q" ' || chr(1) || chr(8) || chr(12) || chr(27) || chr(30) || chr(31)
            || chr(127) || E'\t\n\r' || 'é€☃😀' || '\u0001 \\u0002 \/ ' || g END,
  'v"' || g, 'c' || (g % 10), 'n\' || g, g % 2 = 0, (g % 300)::int2, g::int8 * 1000000007,
  g / 7.0, CASE g % 4 WHEN 0 THEN 'NaN' WHEN 1 THEN '-Infinity' ELSE g * 1e300 END,
  CASE WHEN g % 5 = 0 THEN 'NaN' ELSE g / 3.0 END, g * 1.25,
  timestamptz '2024-02-29 12:34:56.789+00' + g * interval '1 day',
  CASE WHEN g % 9 = 0 THEN 'infinity' ELSE timestamp '0001-01-01 BC' + g * interval '1 hour' END,
  date '2000-01-01' + g, time '23:59:59.999999', timetz '10:00+05:30', g * interval '1 min',
  md5(g::text)::uuid,
  CASE WHEN g % 13 = 0 THEN NULL
       ELSE jsonb_build_object('k', g, 's', E'x\\y "z"\n\t' || chr(1), 'a',
                               jsonb_build_array(g, null, 1.5e10, '🎉'), '"q"', '{}'::jsonb) END,
  CASE WHEN g % 3 = 0 THEN json E'{ "raw" :\n\t[1, "two"] }' ELSE json '"just \"a\" string"' END,
  ARRAY[g, NULL, -g], ARRAY['a"b', E'c\\d', NULL, 'NULL', '', E'new\nline', ' sp '],
  ARRAY['{"a": 1}'::jsonb, 'null'::jsonb], '10.0.0.1/8', '192.168.0.0/16', '08:00:2b:01:02:03',
  CASE WHEN g % 7 = 0 THEN NULL ELSE decode(repeat('00ff22' || lpad(to_hex(g % 256), 2, '0'), 3), 'hex') END,
  B'1010', (ARRAY['ok', 'not "ok"', 'back\slash'])[1 + g % 3]::mood, 'LOUD ' || g,
  ROW(E'in "pair"\n', g)::pair, int4range(g, g * 2), point(g, -g),
  to_tsvector('simple', 'a quoted "word" ' || g), xmlparse(content '<a x="1">t &amp; ' || g || '</a>'),
  repeat('padding ', 40)
FROM generate_series(1, 3000) g
"""


async def _chunks(
    url: str, table: str, directory: Path, split: Split | None, raw: list[bool]
) -> list[bytes]:
    """The table's whole-table snapshot by `run_batch`, its chunks, the last one without its
    snapshot-end message; `raw` gets whether its lines came as pre-images."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        info = await load_table(conn, "public", table)
        assert info is not None
        query = row_json_sql(info, info.columns, info.pk, None)
        assert query.bulk is not None and query.bulk.pre_image is not None
        raw.append(query.bulk.for_connection(conn.pgconn).raw)
        counts: list[int] = []
        directory.mkdir()
        job = SnapshotJob(
            log=ShapeLog(directory / "shape", CHUNK, fsync=False),
            query=query,
            on_snapshot=lambda _: None,
            on_chunk=lambda count, _: counts.append(count),
            cancelled=lambda: False,
            record={"handle": "1"},
        )
        assert await run_batch(conn, [job], CHUNK, fsync=False, split=split) == []
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    assert job.done and job.error is None
    chunks = [job.log.read_snapshot_chunk(i) for i in range(counts[-1])]
    last, _, _ = chunks[-1].rpartition(END)
    return [*chunks[:-1], last]


async def _row_by_row(url: str, table: str) -> bytes:
    """The same entries from the row-by-row query (one COPY text line per row), joined."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        info = await load_table(conn, "public", table)
        assert info is not None
        query = row_json_sql(info, info.columns, info.pk, None)
        lines: list[bytes] = []
        async with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query.sql)) as copy:
            async for data in copy:
                lines.append(bytes(data))
    return query.finish_block(lines)


@pytest.mark.parametrize("head_pages", [None, 32])
async def test_a_whole_table_of_every_type_equals_the_row_by_row_entries(
    db_url: str, tmp_path: Path, head_pages: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """One backend reading compact lines, or the head compact and the tail full (wide rows)
    shared by two backends: the entries are those the row-by-row query gives."""
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TYPES)
        conn.execute(ROWS)
    split = None if head_pages is None else Split(url, head_pages)
    caplog.set_level(logging.DEBUG, logger="sync_engine.snapshot.bulk")
    raw: list[bool] = []
    chunks = await _chunks(url, "every", tmp_path / "bulk", split, raw)
    assert raw == [True]
    if split is not None:
        assert "read by two backends (full: True)" in caplog.text
    assert len(chunks) > 10
    assert b",".join(chunks) == await _row_by_row(url, "every")


async def test_text_in_another_encoding_comes_as_it_always_came(
    db_url: str, tmp_path: Path
) -> None:
    """A session whose client encoding is not UTF-8 gets no pre-images (`ÿ` is 0xff in
    LATIN1, the stand-in of a quote): the lines it always got, the same entries as row by
    row in that encoding."""
    url = make_conninfo(with_display_settings(db_url), client_encoding="LATIN1")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE latin (id int PRIMARY KEY, t text, j jsonb, pad text)")
        conn.execute(
            """INSERT INTO latin SELECT g, 'ÿþúé "q" \\ ' || g, jsonb_build_object('ÿ', g),
                 repeat('p', 300) FROM generate_series(1, 3000) g"""
        )
    raw: list[bool] = []
    chunks = await _chunks(url, "latin", tmp_path / "bulk", Split(url, 32), raw)
    assert raw == [False]
    whole = b",".join(chunks)
    assert whole == await _row_by_row(url, "latin")
    assert "ÿþúé".encode("latin-1") in whole


async def test_a_database_that_takes_any_bytes_gets_no_pre_images(
    db_url: str, pg_server_url: str, tmp_path: Path
) -> None:
    """An SQL_ASCII database stores text bytes unchecked: it gets no pre-images, whatever
    the session's encoding, and the same entries as row by row."""
    # (a name of its own, dropped after: a second run on a kept cluster, TEST_DATABASE_URL,
    # found `anybytes` there already)
    name = f"anybytes_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        url = make_conninfo(with_display_settings(db_url), dbname=name, client_encoding="UTF8")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bytes (id int PRIMARY KEY, t text)")
            conn.execute(
                r"""INSERT INTO bytes SELECT g, 'é "q" \ ' || chr(9) || g
                    FROM generate_series(1, 500) g"""
            )
        raw: list[bool] = []
        chunks = await _chunks(url, "bytes", tmp_path / "bulk", None, raw)
        assert raw == [False]
        assert b",".join(chunks) == await _row_by_row(url, "bytes")
    finally:
        drop_database(pg_server_url, name)
