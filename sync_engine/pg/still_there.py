"""Whether tables are still there under their names, asked in rounds on a connection of its
own: the check each `-1` request for an existing shape waits for (`Tables.still_there`).

Each such request must be answered from a check begun after it arrived: Postgres streams no
DROP, so only a read of the catalog can say that a table was dropped (or dropped and made
again under its name) since its shapes were made. That is one check per request in a busy
second, so it must cost little:

- Rounds. Every request waits for the next round that begins after it arrived; a round asks
  about every table asked for since the previous one began, in one query, and the next
  begins as soon as one ends if anyone waits. A storm of requests for many shapes of many
  tables costs one query per round trip, not one per request or per table.
- Its own connection, driven through libpq (`SocketWaiter`), one prepared statement. On the
  catalog connection through psycopg (its lock, a task and a timeout per use, `execute`),
  a check cost ~200 µs of event-loop CPU, ~40% of a `-1` answer's; a lookup or a `publish`
  waiting up to 30 s for older transactions held that connection, and these checks queued
  behind it. The connection closes after `IDLE_CLOSE` seconds unused.

A round that Postgres does not answer within the timeout (`Settings.catalog_timeout`), or
on a connection that fails, fails its waiters with the 503 it would have been (answered as
such: an unchecked log may be a dropped table's); its connection is given up and the next
round opens another.
After a round that ran out of time, and until one is answered, a request waits at most
`DOWN_WAIT` for its round: a hung Postgres costs each `-1` half a second, not the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq

from ..errors import ServiceUnavailable
from .waiter import SocketWaiter

logger = logging.getLogger(__name__)

#: The query: the schema, name, relfilenode and primary key and columns (`columns_text`) of
#: each of the tables (by oid, $1) still there, and what else changes its rows with no
#: WAL row and no rewrite (`Extra`): its columns' collations, how the publication ($5)
#: publishes it, its columns' enums' values and composites' attributes (of the tables $6
#: only, whose descriptions have any: the walk of its types is the dearest part of a
#: round, ~3 ms of Postgres time through hash joins and ~0.3 ms by index, where every such
#: change of any other table changes a column's type, seen in its columns); then the groups
#: ($2) of descendants ($3, with the relfilenodes described, $4) of which one has another
#: relfilenode now, one row each (compared in Postgres: a table of 500 partitions is one
#: row, not 500 to read and compare here).
#: Arrays as text. Every catalog row is looked up by oid through a correlated subquery or a
#: `LATERAL (... OFFSET 0)` (kept a nested loop over an index): the connection runs one
#: generic plan (`StillThere._open`), which must not hash-join a whole catalog whatever
#: the round asks (a join of the descendants' array to pg_class was a scan of pg_class;
#: the types' walk, hash joins of pg_type and pg_attribute: ~5 ms a round).
_SELECT = (
    "SELECT c.oid::pg_catalog.int8, (SELECT n.nspname FROM pg_catalog.pg_namespace n"
    " WHERE n.oid = c.relnamespace), c.relname, c.relfilenode::pg_catalog.int8,"
    " NULL::pg_catalog.int4, COALESCE((SELECT i.indkey::pg_catalog.text"
    " FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), '')"
    " OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) COALESCE((SELECT pg_catalog.string_agg("
    "pg_catalog.concat_ws(' ', a.attnum, a.atttypid, a.atttypmod, a.attnotnull,"
    " pg_catalog.length(a.attname::pg_catalog.text), a.attname), '/' ORDER BY a.attnum)"
    " FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
    " AND NOT a.attisdropped), ''),"
    " (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', a.attnum, a.attcollation), '/'"
    " ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid"
    " AND a.attnum > 0 AND NOT a.attisdropped),"
    " (SELECT pg_catalog.concat_ws('|', COALESCE((SELECT pg_catalog.string_agg("
    "r.oid::pg_catalog.text, ',' ORDER BY r.oid) FROM ({7}) x(relid) CROSS JOIN LATERAL"
    " (SELECT r.oid FROM pg_catalog.pg_publication_rel r WHERE r.prrelid = x.relid"
    " AND r.prpubid = p.oid OFFSET 0) r), ''), p.puballtables, {5})"
    " FROM pg_catalog.pg_publication p WHERE p.pubname = {4}),"
    " CASE WHEN c.oid = ANY({6}::pg_catalog.text::pg_catalog.oid[]) THEN"
    " (WITH RECURSIVE ty(oid) AS (SELECT a.atttypid FROM pg_catalog.pg_attribute a"
    " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " UNION SELECT m.oid FROM ty CROSS JOIN LATERAL (SELECT t.oid, t.typtype, t.typbasetype,"
    " t.typelem, t.typrelid FROM pg_catalog.pg_type t WHERE t.oid = ty.oid OFFSET 0) t"
    " CROSS JOIN LATERAL (SELECT t.typbasetype WHERE t.typtype = 'd'"
    " UNION ALL SELECT t.typelem WHERE t.typelem <> 0"
    " UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid"
    " UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE t.typtype = 'm'"
    " AND (pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.->>) 'rngmultitypid')::pg_catalog.oid"
    " = t.oid"
    " UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE t.typtype = 'c'"
    " AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS m(oid))"
    " SELECT COALESCE((SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', e.oid,"
    " pg_catalog.length(e.enumlabel::pg_catalog.text), e.enumlabel), '/' ORDER BY e.oid)"
    " FROM ty CROSS JOIN LATERAL (SELECT e.oid, e.enumlabel FROM pg_catalog.pg_enum e"
    " WHERE e.enumtypid = ty.oid OFFSET 0) e), '')"
    " OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) COALESCE((SELECT"
    " pg_catalog.string_agg(pg_catalog.concat_ws(' ', t.oid, a.attnum, a.atttypid,"
    " pg_catalog.length(a.attname::pg_catalog.text), a.attname), '/' ORDER BY t.oid, a.attnum)"
    " FROM ty CROSS JOIN LATERAL (SELECT t.oid, t.typrelid FROM pg_catalog.pg_type t"
    " WHERE t.oid = ty.oid AND t.typtype = 'c' OFFSET 0) t CROSS JOIN LATERAL (SELECT"
    " a.attnum, a.atttypid, a.attname FROM pg_catalog.pg_attribute a"
    " WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped OFFSET 0) a), ''))"
    " ELSE '' END"
    " FROM pg_catalog.pg_class c"
    " WHERE c.oid = ANY({0}::pg_catalog.text::pg_catalog.oid[])"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, w.g, NULL, NULL, NULL, NULL FROM ROWS FROM ("
    "pg_catalog.unnest({1}::pg_catalog.text::pg_catalog.int4[]),"
    " pg_catalog.unnest({2}::pg_catalog.text::pg_catalog.oid[]),"
    " pg_catalog.unnest({3}::pg_catalog.text::pg_catalog.oid[])) AS w(g, oid, node)"
    " WHERE (SELECT c.relfilenode FROM pg_catalog.pg_class c WHERE c.oid = w.oid) <> w.node"
    " GROUP BY w.g"
)
#: The table and its partition ancestors (each once, as the rows of `pg_class` are).
_LINEAGE = "SELECT c.oid UNION SELECT pa.relid FROM pg_catalog.pg_partition_ancestors(c.oid) pa"
#: The `pg_publication_namespace` rows that publish a table's schema (or an ancestor's):
#: Postgres 15 and later; before, none.
_SCHEMAS_15 = (
    "COALESCE((SELECT pg_catalog.string_agg(s.oid::pg_catalog.text, ',' ORDER BY s.oid)"
    " FROM ({0}) x(relid) CROSS JOIN LATERAL (SELECT ac.relnamespace"
    " FROM pg_catalog.pg_class ac WHERE ac.oid = x.relid OFFSET 0) ac CROSS JOIN LATERAL"
    " (SELECT s.oid FROM pg_catalog.pg_publication_namespace s WHERE s.pnnspid = ac.relnamespace"
    " AND s.pnpubid = p.oid OFFSET 0) s), '')"
)


def query(server_version: int, *params: str) -> str:
    """The round's query on a server of `server_version`, its parameters spelt `params`."""
    schemas = _SCHEMAS_15.format(_LINEAGE) if server_version >= 150000 else "''"
    return _SELECT.format(*params[:5], schemas, *params[5:], _LINEAGE)


#: Prepared on the checks' own connection.
STATEMENT = b"shapegate_still_there"
#: Seconds the connection is kept unused before it is closed.
IDLE_CLOSE = 60.0
#: Descriptions whose descendants' array texts are kept (then all are dropped and made again).
TEXTS_KEPT = 256
#: Seconds a request waits for its round while the last one got no answer in its time
#: (then its 503, as after a timeout).
DOWN_WAIT = 0.5

#: What a round found of a table: its (schema, name, relfilenode, columns, collations,
#: publication, types) (`Found`), None when no table has its oid.
Names = tuple[str, str, int, str, str, str | None, str] | None


def columns_text(
    columns: Iterable[tuple[int, int, int, bool, str]], primary_key: Iterable[int]
) -> str:
    """The text the round's query says a table's primary key and columns in, from the
    key's attnums in key order (`pg_index.indkey`; none without a key), then (attnum, type
    oid, typmod, not null, name) of each column there (attnum > 0, not dropped): what a
    description's are compared with (`_shape_of`'s fields).

    A column added (with a default), dropped, renamed, retyped without a rewrite
    (`varchar(10)` to `varchar(20)`) or made NOT NULL changes it: each writes no row to
    the WAL and keeps the table's relfilenode, yet the rows' columns, or the
    `electric-schema` header, read otherwise. So does a new primary key (`DROP CONSTRAINT
    t_pkey, ADD PRIMARY KEY (id, org)`): the log's rows are keyed by the old one, and a row
    new under the new key would overwrite another under the old one in every client. The
    key's attnums are digits and spaces, ended by `|`; each name is preceded by its length:
    no two keys and column lists say one text."""
    return (
        " ".join(str(attnum) for attnum in primary_key)
        + "|"
        + "/".join(
            f"{attnum} {type_oid} {type_mod} {'t' if not_null else 'f'} {len(name)} {name}"
            for attnum, type_oid, type_mod, not_null, name in sorted(columns)
        )
    )


def collations_text(columns: Iterable[tuple[int, str | None]]) -> str | None:
    """The text the round says a table's columns' collations in (attnum and
    `pg_attribute.attcollation` of each, 0: not collatable), from each column's attnum and
    `ColumnInfo.collation` (whose fifth field is that OID); None when a column's was not
    recorded (described by an engine that did not: nothing to compare)."""
    parts = []
    for attnum, collation in sorted(columns, key=lambda column: column[0]):
        fields = None if collation is None else collation.split("|")
        if fields is None or len(fields) < 5:
            return None
        parts.append(f"{attnum} {fields[4]}")
    return "/".join(parts)


def published_text(entries: Iterable[int], all_tables: bool, schemas: Iterable[int]) -> str:
    """The text the round says how the publication publishes a table in: the
    `pg_publication_rel` rows of it or a partition ancestor, FOR ALL TABLES, the
    `pg_publication_namespace` rows of its schema (`HowPublished`'s fields of the same)."""
    return "|".join(
        (
            ",".join(map(str, sorted(entries))),
            "t" if all_tables else "f",
            ",".join(map(str, sorted(schemas))),
        )
    )


#: The enums' values (pg_enum oid, label) and composites' attributes (type oid, attnum,
#: attribute type oid, name) a table's columns are made of, as a round said them.
Types = tuple[frozenset[tuple[int, str]], frozenset[tuple[int, int, int, str]]]


def types_of(text: str) -> Types:
    """`Types` from the round's text of them: values, `|`, attributes; each item its
    numbers, the length of its name and the name (which may hold any character)."""
    enums, at = _items(text, 0, 1)
    composites, _ = _items(text, at + 1, 3)
    return (
        frozenset((int(item[0]), str(item[1])) for item in enums),
        frozenset((int(a[0]), int(a[1]), int(a[2]), str(a[3])) for a in composites),
    )


def _items(text: str, at: int, numbers: int) -> tuple[list[tuple[int | str, ...]], int]:
    """The items from `at` up to a `|` between two (or the end), each `numbers` numbers
    and a name preceded by its length, separated by `/`; and where they end."""
    items: list[tuple[int | str, ...]] = []
    end = len(text)
    while at < end and text[at] != "|":
        fields: list[int] = []
        for _ in range(numbers + 1):
            space = text.index(" ", at)
            fields.append(int(text[at:space]))
            at = space + 1
        length = fields.pop()
        items.append((*fields, text[at : at + length]))
        at += length
        if at < end and text[at] == "/":
            at += 1
    return items, at


def stopping() -> ServiceUnavailable:
    return ServiceUnavailable("The source is stopping", retry_after=1)


def not_answering() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Database is not answering", retry_after=5, code="database_unreachable"
    )


#: What a round found: by oid, for the oids there, (schema, name, relfilenode, columns
#: (`columns_text`), collations (`collations_text`), how the publication publishes it
#: (`published_text`; None: no such publication), the enums' values and composites'
#: attributes its columns are made of (`types_text`)).
Found = dict[int, tuple[str, str, int, str, str, str | None, str]]
#: A round's question: the tables' oids, and the descendants' groups, oids, relfilenodes
#: (the query's four array texts), the publication's name, and the tables whose types to
#: read (an array text).
Question = tuple[str, str, str, str, str, str]
#: A round's answer: what it found, and the groups with a descendant rewritten.
Answer = tuple[Found, set[int]]


async def ask_on(conn: AsyncConnection[Any], question: Question) -> Answer:
    """A round's query on a psycopg connection (the catalog's: `StillThere`'s fallback)."""
    names = [f"%(p{i})s" for i in range(len(question))]  # (not in the text's order)
    text = query(conn.info.server_version, *names)
    cur = await conn.execute(text.encode(), {f"p{i}": q for i, q in enumerate(question)})
    found: Found = {}
    rewritten: set[int] = set()
    for oid, schema, name, node, group, columns, colls, pub, types in await cur.fetchall():
        if group is not None:
            rewritten.add(group)
        else:
            found[oid] = (schema, name, node, columns, colls or "", pub, types or "")
    return found, rewritten


class _Link:
    """The connection, its socket watched by a `SocketWaiter`, the statement prepared."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.waiter = SocketWaiter(conn.pgconn)
        self.encoding = conn.info.encoding  # (names are decoded as the catalog's are)
        self.used_at = time.monotonic()

    async def prepare(self) -> None:
        text = query(self.pgconn.server_version, "$1", "$2", "$3", "$4", "$5", "$6")
        self.pgconn.send_prepare(STATEMENT, text.encode())
        await self._results()

    async def ask(self, question: Question) -> Answer:
        """The round's `question` answered now."""
        self.used_at = time.monotonic()
        self.pgconn.send_query_prepared(STATEMENT, [text.encode() for text in question])
        found: Found = {}
        rewritten: set[int] = set()
        encoding = self.encoding
        for oid, schema, name, node, group, columns, colls, pub, types in await self._results():
            if group is not None:
                rewritten.add(int(group))
            elif oid is not None and schema is not None and name is not None and node:
                found[int(oid)] = (
                    schema.decode(encoding),
                    name.decode(encoding),
                    int(node),
                    (columns or b"").decode(encoding),
                    (colls or b"").decode(),
                    None if pub is None else pub.decode(),
                    (types or b"").decode(encoding),
                )
        return found, rewritten

    async def _results(self) -> list[tuple[bytes | None, ...]]:
        await self.waiter.flush()
        rows: list[tuple[bytes | None, ...]] = []
        error: pq.abc.PGresult | None = None
        while (res := await self.waiter.result()) is not None:
            if res.status == pq.ExecStatus.TUPLES_OK:
                for i in range(res.ntuples):
                    rows.append(tuple(res.get_value(i, j) for j in range(res.nfields)))
            elif res.status != pq.ExecStatus.COMMAND_OK and error is None:
                error = res
        if error is not None:
            message = (error.error_message or b"").decode(self.encoding, "replace").strip()
            raise psycopg.OperationalError(f"still-there check failed: {message}")
        return rows

    def close(self) -> None:
        """Close at once (the socket unwatched first: see `SocketWaiter`); a query running
        in a backend that does not answer ends when it reads the closed socket."""
        self.waiter.unwatch()
        self.pgconn.finish()


#: Descendants to compare: (oid, relfilenode) of each, as a shape's description has them.
Watch = tuple[tuple[int, int], ...]
#: What a round found of a table: its names, and whether a watched descendant was rewritten.
Verdict = tuple[Names, bool]


class _Group:
    """The requests a round answers about one table under one description."""

    __slots__ = ("futures", "oid", "types", "watch")

    def __init__(self, oid: int, watch: Watch) -> None:
        self.oid = oid
        self.watch = watch
        #: Whether the round reads the enums' values and composites' attributes its
        #: columns are made of (`Found`; else an empty text).
        self.types = False
        self.futures: list[asyncio.Future[Verdict]] = []

    def fail(self, failure: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(failure)


class StillThere:
    """The tables' still-there checks of one source (see the module's docstring)."""

    def __init__(
        self,
        dsn: str,
        publication: str,
        timeout: Callable[[], float],
        fallback: Callable[[Question], Awaitable[Answer]],
    ) -> None:
        self.dsn = dsn
        #: The engine's publication (whether it still publishes each table: `Found`).
        self.publication = publication
        #: Seconds a round (with the connection it may open) may take: the catalog's.
        self.timeout = timeout
        #: A round's query on the catalog connection, for when this one's cannot be opened.
        self.fallback = fallback
        # Rounds have failed since one was last answered (said once, at WARNING).
        self._failing = False
        # Requests waiting for the next round, by table and description of its descendants.
        self._waiting: dict[tuple[int, int], _Group] = {}
        self._rounds: asyncio.Task[None] | None = None
        # What the last round that asked about each table found: (when it began, names, the
        # descendants it compared, whether one was rewritten, whether it read the types).
        self._seen: dict[int, tuple[float, Names, Watch, bool, bool]] = {}
        self._link: _Link | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False
        # The last round ran out of time (Postgres hangs, or a partition): requests wait
        # `DOWN_WAIT` for theirs, not the timeout, until a round is answered.
        self._down = False
        # The array texts of each description's descendants (`_question`).
        self._texts: dict[int, tuple[Watch, tuple[int, str, str]]] = {}
        #: Rounds run (for tests and benchmarks: how many requests shared one).
        self.rounds_run = 0

    async def check(self, oid: int, watch: Watch, asked: float, *, types: bool = False) -> Verdict:
        """What a round begun at or after `asked` (monotonic) found of the table `oid`: its
        schema, name, relfilenode and columns (`columns_text`; None: not there), and
        whether one of the descendants `watch` lists (oid, relfilenode: a partitioned
        table's partitions) has another relfilenode now (one missing is `check_families`'
        business). Raises `ServiceUnavailable` when the round got no answer.

        One waiter per request whatever `watch` holds: the round compares the descendants
        once for every request of the same description (a waiter per descendant cost a -1
        of a table of 500 partitions 4.6 times the CPU, review 23:15)."""
        seen = self._seen.get(oid)
        if seen is not None and seen[0] >= asked and seen[2] is watch and seen[4] >= types:
            return seen[1], seen[3]
        if self._closed:
            raise stopping()
        key = (oid, id(watch))
        group = self._waiting.get(key)
        if group is None:
            group = self._waiting[key] = _Group(oid, watch)
        group.types |= types
        found: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        group.futures.append(found)
        if self._rounds is None:  # (one running began before this request: it waits)
            self._rounds = asyncio.ensure_future(self._run())
        if self._down:
            # The last round got no answer in its time: each request waiting the whole
            # timeout again (twice when it arrived during a round) held every -1 of every
            # shape 5-10 s while Postgres hung. Its round still runs, for the next ones.
            await asyncio.wait({found}, timeout=DOWN_WAIT)
            if not found.done():
                found.cancel()
                raise not_answering()
        return await found

    def forget(self, oid: int) -> None:
        """Drop what was seen of `oid` (its table changed)."""
        self._seen.pop(oid, None)

    async def _run(self) -> None:
        while self._waiting and not self._closed:
            batch, self._waiting = self._waiting, {}
            started = time.monotonic()  # (after every waiter of `batch` arrived)
            watched = [group for group in batch.values() if group.watch]
            try:
                found, rewritten = await self._ask(self._question(batch.values(), watched))
            except BaseException as exc:
                failure = exc if isinstance(exc, ServiceUnavailable) else stopping()
                if isinstance(exc, ServiceUnavailable) and not self._failing:
                    self._failing = True
                    logger.warning(
                        "a still-there check got no answer (%s): first requests of existing"
                        " shapes are answered 503 until one does",
                        exc.message,
                    )
                failed = [batch]
                if self._down:  # (and those that came meanwhile wait no more either)
                    failed.append(self._waiting)
                    self._waiting = {}
                for group in (g for waiting in failed for g in waiting.values()):
                    group.fail(failure)
                if isinstance(exc, ServiceUnavailable):
                    continue
                self._end(failure)
                raise
            self.rounds_run += 1
            self._down = False
            if self._failing:
                self._failing = False
                logger.warning("still-there checks are answered again")
            changed = {id(watched[i]) for i in rewritten}
            for group in batch.values():
                verdict = (found.get(group.oid), id(group) in changed)
                self._seen[group.oid] = (started, verdict[0], group.watch, verdict[1], group.types)
                for future in group.futures:
                    if not future.done():
                        future.set_result(verdict)
        self._end(stopping())

    def _end(self, failure: ServiceUnavailable) -> None:
        """The rounds end: fail whoever still waits if no round will come (closed)."""
        self._rounds = None
        if self._closed:
            waiting, self._waiting = self._waiting, {}
            for group in waiting.values():
                group.fail(failure)

    def _question(self, groups: Iterable[_Group], watched: list[_Group]) -> Question:
        """The round's question: the tables' oids, and each watched group's descendants
        (their texts kept per description: a table of 500 partitions costs a few string
        joins a round, not 500 numbers to write)."""
        groups = list(groups)
        roots = "{" + ",".join({str(group.oid) for group in groups}) + "}"
        typed = "{" + ",".join({str(group.oid) for group in groups if group.types}) + "}"
        numbers, oids, nodes = [], [], []
        for i, group in enumerate(watched):
            count, oid_text, node_text = self._texts_of(group.watch)
            numbers.append((f"{i}," * count)[:-1])
            oids.append(oid_text)
            nodes.append(node_text)
        return (
            roots,
            "{" + ",".join(numbers) + "}",
            "{" + ",".join(oids) + "}",
            "{" + ",".join(nodes) + "}",
            self.publication,
            typed,
        )

    def _texts_of(self, watch: Watch) -> tuple[int, str, str]:
        kept = self._texts.get(id(watch))
        if kept is not None and kept[0] is watch:
            return kept[1]
        if len(self._texts) >= TEXTS_KEPT:
            self._texts.clear()
        texts = (
            len(watch),
            ",".join(str(oid) for oid, _ in watch),
            ",".join(str(node) for _, node in watch),
        )
        self._texts[id(watch)] = (watch, texts)
        return texts

    async def _ask(self, question: Question) -> Answer:
        """One round's query, on the kept connection (again on a new one if that one had
        died: Postgres restarted since) or a new one, within `timeout()`. When no connection
        of its own can be had (Postgres out of connection slots, a role's CONNECTION LIMIT),
        on the catalog connection (`fallback`), open already: a failed open served the -1
        unchecked (review 23:05, MEDIUM), where the catalog connection saw the DROP."""
        timeout = self.timeout()
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(2):
                    link = self._link
                    fresh = link is None
                    try:
                        if link is None:
                            link = self._link = await self._open()
                        return await link.ask(question)
                    except (psycopg.Error, OSError) as exc:
                        self._drop()
                        if fresh or attempt:
                            logger.debug("still-there check on its own connection: %s", exc)
                            break
        except TimeoutError:
            self._drop()
            self._down = True
            raise not_answering() from None
        return await self.fallback(question)

    async def _open(self) -> _Link:
        conn = await AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
        link = _Link(conn)
        try:
            # One generic plan, made once: the query is shaped so that it looks every table
            # up by oid in an index (`_SELECT`), whatever the round's arrays hold; planning
            # it each round cost 1.5-2.5 ms, more than running it. No JIT: the query's
            # estimated cost passes `jit_above_cost`, and compiling it cost each round
            # 100-200 ms against its ~0.6 ms run.
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute("SET jit = off")
            await link.prepare()
        except BaseException:
            link.close()
            raise
        if self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(IDLE_CLOSE, self._reap)
        return link

    def _reap(self) -> None:
        self._idle_timer = None
        link = self._link
        if link is None:
            return
        idle = time.monotonic() - link.used_at
        if idle >= IDLE_CLOSE and self._rounds is None:
            self._drop()
        else:
            wait = max(1.0, IDLE_CLOSE - idle)
            self._idle_timer = asyncio.get_running_loop().call_later(wait, self._reap)

    def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def close(self) -> None:
        """Close the connection; a round in progress ends (its waiters get a 503)."""
        self._closed = True
        rounds = self._rounds
        if rounds is not None:
            rounds.cancel()
            await asyncio.wait({rounds})
        self._drop()
