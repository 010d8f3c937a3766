// Many Postgres types, compared value by value with what psql prints for the same rows under
// Electric's display settings (DateStyle ISO, DMY; TimeZone UTC; IntervalStyle iso_8601;
// bytea_output hex; extra_float_digits 1).
//
// Values travel as Postgres text; the client parses some types. The expected value of each
// column is derived from psql's text the same way:
//   int2/int4/float4/float8 -> Number, int8 -> BigInt, bool -> 't' is true, json/jsonb -> JSON.parse,
//   arrays -> JSON.parse(psql's to_json(col)) (an independent oracle for the array literal),
//   everything else (numeric, timestamptz, date, interval, uuid, bytea, enum, text, ...) -> the
//   exact text psql prints. SQL NULL -> null.
//
// Rows are checked three ways: from the initial snapshot, from live inserts (the WAL path), and
// after live updates, because the snapshot and the replication stream render values separately.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, show } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

// column name -> how the client presents it
const COLUMNS = {
  id: 'int4',
  i2: 'int2',
  i8: 'int8',
  f4: 'float4',
  f8: 'float8',
  num: 'text', // numeric stays a string
  num_s: 'text', // numeric(12,4)
  ts: 'text', // timestamptz
  ts_naive: 'text', // timestamp
  d: 'text', // date
  iv: 'text', // interval
  j: 'json',
  jb: 'json',
  ia: 'array',
  ta: 'array',
  m: 'text', // enum
  b: 'text', // bytea
  u: 'text', // uuid
  flag: 'bool',
  t: 'text',
  vc: 'text', // varchar(20)
  ch: 'text', // char(6): padding kept
}
const ARRAY_COLS = Object.keys(COLUMNS).filter((c) => COLUMNS[c] === 'array')

const DDL = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"', 'naïve ☃');
  CREATE TABLE typed (
    id int4 PRIMARY KEY,
    i2 int2, i8 int8, f4 float4, f8 float8,
    num numeric, num_s numeric(12,4),
    ts timestamptz, ts_naive timestamp, d date, iv interval,
    j json, jb jsonb,
    ia int4[], ta text[],
    m mood, b bytea, u uuid, flag bool,
    t text, vc varchar(20), ch char(6)
  );`

// Each VALUES tuple is inserted under several ids (base + offset), see ROW_SETS.
const VALUES = [
  // 1: everyday values
  `(1, 12, 1234567890123, 1.5, 3.14159265358979, 12345.6789, 42.5,
    '2024-03-05 14:30:15.123456+01', '2024-03-05 14:30:15', '2024-03-05', '1 day 2 hours 3 minutes 4.5 seconds',
    '{"a": 1, "b": [true, null, "x"]}', '{"nested": {"k": "v"}, "n": 1.5, "list": [1, 2, 3]}',
    '{1,2,3}', '{"plain","with space","with,comma"}',
    'happy', '\\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true,
    'hello world', 'short', 'ab')`,
  // 2: all NULL
  `(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`,
  // 3: extremes and awkward text
  `(3, -32768, 9223372036854775807, -3.4028235e38, 1e-300, -0.000000000000000000001, -99999999.9999,
    '0001-01-01 00:00:00+00 BC', '294276-12-31 23:59:59.999999', '4713-01-01 BC', '-1 year -2 months +3 days -04:05:06.789',
    '"just a string with \\"quotes\\" and \\\\ backslash"', '[]',
    '{}', '{}',
    'it''s "complicated"', '\\x', '00000000-0000-0000-0000-000000000000', false,
    E'quote '' double " backslash \\\\ tab \\t newline \\n end', '', ' ')`,
  // 4: unicode, special floats, NULLs inside arrays, infinities
  `(4, 0, -9223372036854775808, 'NaN', 'Infinity', 'NaN', 0,
    'infinity', '-infinity', 'infinity', '0 seconds',
    '{"emoji": "😀", "cjk": "漢字", "esc": "tab\\tnl\\n"}', '{"a": {"b": {"c": [null, false, 0, "", {}]}}}',
    '{NULL,-2147483648,2147483647}', '{NULL,"NULL","","quote\\"d","back\\\\slash","comma,here","{braces}","ünï😀"}',
    'naïve ☃', '\\x00ff00ff0a0d', 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', NULL,
    'Ünïcødé ☃ 😀 漢字 — “smart quotes” ‘single’', 'naïve ☃ 😀', '漢字')`,
  // 5: more numbers and times
  `(5, 1, 1, 0.1, 0.1, 0.1000, 0.1,
    '2000-02-29 23:59:59.5-08', '1999-12-31 23:59:59.999', '2000-02-29', '1 mon',
    'null', '{"big": 12345678901234567890, "float": 1.0e10}',
    '{{1,2},{3,4}}', '{{"a","b"},{"c",NULL}}',
    'sad', '\\x5c00', '123e4567-e89b-12d3-a456-426614174000', true,
    E'line1\\r\\nline2', 'x', 'abcdef')`,
]

// rows inserted before the shape exists (snapshot path) get ids 1..5; the same values inserted
// while the shape is live (WAL path) get ids 101..105.
function insertSql(offset) {
  return VALUES.map((v) => {
    const shifted = v.replace(/^\((\d+),/, (_, id) => `(${Number(id) + offset},`)
    return `INSERT INTO typed VALUES ${shifted};`
  }).join('\n')
}

function expectedValue(kind, text, jsonText) {
  if (text === null) return null
  switch (kind) {
    case 'int2':
    case 'int4':
    case 'float4':
    case 'float8':
      return Number(text)
    case 'int8':
      return BigInt(text)
    case 'bool':
      return text === 't'
    case 'json':
      return JSON.parse(text)
    case 'array':
      return JSON.parse(jsonText)
    default:
      return text
  }
}

/** The expected client-side rows, computed from what psql prints. */
async function expectedRows(env) {
  const cols = Object.keys(COLUMNS)
  const select = [...cols, ...ARRAY_COLS.map((c) => `to_json(${c})::text AS ${c}_json`)].join(', ')
  const rows = await env.query(`SELECT ${select} FROM typed ORDER BY id;`)
  const byId = new Map()
  for (const r of rows) {
    const obj = {}
    cols.forEach((c, i) => {
      const jsonIdx = cols.length + ARRAY_COLS.indexOf(c)
      obj[c] = expectedValue(COLUMNS[c], r[i], COLUMNS[c] === 'array' ? r[jsonIdx] : undefined)
    })
    byId.set(obj.id, obj)
  }
  return byId
}

/** Compare every column of every row; report all mismatches at once. */
function compareAll(shapeRows, expected, label) {
  const problems = []
  const actual = new Map(shapeRows.map((r) => [r.id, r]))
  for (const [id, exp] of expected) {
    const act = actual.get(id)
    if (!act) {
      problems.push(`row ${id}: missing from the Shape`)
      continue
    }
    for (const col of Object.keys(COLUMNS)) {
      try {
        assert.deepStrictEqual(act[col], exp[col])
      } catch {
        problems.push(`row ${id} column ${col} (${COLUMNS[col]}): Shape has ${show(act[col])}, psql says ${show(exp[col])}`)
      }
    }
    const extra = Object.keys(act).filter((k) => !(k in COLUMNS))
    if (extra.length) problems.push(`row ${id}: unexpected columns ${extra}`)
  }
  for (const id of actual.keys()) if (!expected.has(id)) problems.push(`row ${id}: in the Shape but not in the table`)
  assert.deepEqual(problems, [], `${label}: ${problems.length} mismatch(es):\n  ${problems.join('\n  ')}`)
}

test('types: snapshot and live values match psql value by value', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(DDL + insertSql(0))

  const { shape, errors } = env.shape({ params: { table: 'typed' } })
  await env.rows(shape)
  const initialExpected = await expectedRows(env)
  assert.equal(initialExpected.size, VALUES.length)
  compareAll(shape.currentRows, initialExpected, 'initial snapshot')

  // the same values through the replication stream
  await env.sql(insertSql(100))
  await env.until(shape, (r) => r.length === 2 * VALUES.length, { message: 'live inserts of typed rows' })
  compareAll(shape.currentRows, await expectedRows(env), 'after live inserts')
})

test('types: live updates (changed columns only) keep every value exact', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(DDL + insertSql(0))
  const { shape, errors } = env.shape({ params: { table: 'typed' } })
  await env.rows(shape)

  // rotate values between rows: every typed column of every row changes through the WAL,
  // including to and from NULL
  await env.sql(`
    CREATE TEMP TABLE src AS SELECT * FROM typed;
    UPDATE typed t SET (i2, i8, f4, f8, num, num_s, ts, ts_naive, d, iv, j, jb, ia, ta, m, b, u, flag, t, vc, ch) =
      (SELECT i2, i8, f4, f8, num, num_s, ts, ts_naive, d, iv, j, jb, ia, ta, m, b, u, flag, t, vc, ch
         FROM src WHERE src.id = (t.id % 5) + 1);
    UPDATE typed SET t = t || ' (touched)' WHERE id = 1;`)
  const expected = await expectedRows(env)
  const t1 = expected.get(1).t
  await env.until(shape, (r) => r.find((x) => x.id === 1)?.t === t1, { message: 'live updates of typed rows' })
  compareAll(shape.currentRows, expected, 'after live updates')
  assert.deepEqual(errors, [])
})

test('types: a where clause on typed columns with typed params', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(DDL + insertSql(0) + insertSql(100))
  const { shape, errors } = env.shape({
    params: {
      table: 'typed',
      where: `i8 > $1 AND flag = $2 AND u <> $3 AND d < $4`,
      params: ['1', 'true', '00000000-0000-0000-0000-000000000000', '2030-01-01'],
    },
  })
  const rows = await env.rows(shape)
  // i8 > 1 rules out ids 2/102 (NULL), 3/103 (flag false), 4/104 (i8 min), 5/105 (i8 = 1)
  assert.deepEqual(rows.map((r) => r.id).sort((a, b) => a - b), [1, 101])
  const expected = await expectedRows(env)
  for (const id of [2, 3, 4, 5, 102, 103, 104, 105]) expected.delete(id)
  compareAll(rows, expected, 'filtered snapshot')
  assert.deepEqual(errors, [])
})
