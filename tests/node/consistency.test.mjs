// Things an app relies on without thinking about them: awkward primary keys, tables without a
// primary key, big initial syncs that arrive in many chunks while the table is being written to,
// and a sync service that restarts under a running app.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { useCluster, show, sortBy, settlesWithin } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

test('awkward primary keys: one row per key across snapshot, live updates and deletes', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE paths (tenant text, path text, rev int4 NOT NULL, PRIMARY KEY (tenant, path));
    INSERT INTO paths VALUES
      ('acme', '/a/b/', 1),
      ('acme', 'a//b"c', 1),
      ('ü/☃', '_', 1),
      ('x', '', 1),
      ('"q"', 'p', 1),
      ('back\\slash', 'dots..and.dots', 1);`)
  const { shape, errors } = env.shape({ params: { table: 'paths' } })
  assert.equal((await env.rows(shape)).length, 6)

  await env.sql(`UPDATE paths SET rev = 2;`)
  await env.until(shape, (r) => r.length === 6 && r.every((x) => x.rev === 2), {
    message: 'every row updated in place (rev 2), no duplicates',
  })
  await env.sql(`DELETE FROM paths WHERE tenant = 'acme' AND path = 'a//b"c';
                 INSERT INTO paths VALUES ('new/one', '"/"', 1);
                 UPDATE paths SET rev = 3 WHERE tenant = 'new/one';`)
  await env.until(shape, (r) => r.some((x) => x.tenant === 'new/one' && x.rev === 3) && r.length === 6, {
    message: 'delete + insert + update with awkward keys',
  })
  const expected = (await env.query(`SELECT tenant, path, rev FROM paths`)).map(([tenant, path, rev]) => ({
    tenant,
    path,
    rev: Number(rev),
  }))
  const key = (r) => `${r.tenant}\u0000${r.path}`
  assert.deepEqual(
    [...shape.currentRows].sort((a, b) => key(a).localeCompare(key(b))),
    expected.sort((a, b) => key(a).localeCompare(key(b))),
  )
  assert.deepEqual(errors, [])
})

test('a table without a primary key: live updates and deletes', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE events (kind text, n int4, note text);
    ALTER TABLE events REPLICA IDENTITY FULL;
    INSERT INTO events VALUES ('a', 1, 'one'), ('b', 2, NULL), ('c', 3, 'three');`)
  const { shape, errors } = env.shape({ params: { table: 'events' } })
  const byN = (rows) => [...rows].sort((a, b) => a.n - b.n)
  assert.deepEqual(byN(await env.rows(shape)), [
    { kind: 'a', n: 1, note: 'one' },
    { kind: 'b', n: 2, note: null },
    { kind: 'c', n: 3, note: 'three' },
  ])

  await env.sql(`UPDATE events SET note = 'two' WHERE n = 2; DELETE FROM events WHERE n = 3;
                 INSERT INTO events VALUES ('d', 4, NULL);`)
  await env.until(shape, (r) => r.length === 3 && r.some((x) => x.n === 4) && r.find((x) => x.n === 2)?.note === 'two', {
    message: 'update/delete/insert on a table without a PK',
  })
  assert.deepEqual(byN(shape.currentRows), [
    { kind: 'a', n: 1, note: 'one' },
    { kind: 'b', n: 2, note: 'two' },
    { kind: 'd', n: 4, note: null },
  ])
  assert.deepEqual(errors, [])
})

test('large initial sync in many chunks while the table is being written to', T, async (t) => {
  const env = await cluster.newEnv(t, { engineArgs: ['--chunk-bytes', '16384'] })
  await env.sql(`
    CREATE TABLE counters (id int4 PRIMARY KEY, label text NOT NULL, hits int8 NOT NULL);
    INSERT INTO counters SELECT g, 'counter number ' || g || ' ' || repeat('x', g % 50), 0
      FROM generate_series(1, 6000) g;`)

  // a writer doing many small transactions, running while the client syncs
  const writes = []
  for (let i = 0; i < 150; i++) {
    const id = 1 + ((i * 37) % 6000)
    writes.push(`UPDATE counters SET hits = hits + 1 WHERE id = ${id};`)
    writes.push(`INSERT INTO counters VALUES (${10_000 + i}, 'late ${i}', ${i});`)
    if (i % 10 === 0) writes.push(`DELETE FROM counters WHERE id = ${6000 - i};`)
    writes.push(`SELECT pg_sleep(0.002);`)
  }
  const writer = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', env.dbUrl, '-o', '/dev/null'], {
    stdio: ['pipe', 'ignore', 'pipe'],
  })
  let writerErr = ''
  writer.stderr.on('data', (d) => (writerErr += d))
  const writerDone = new Promise((resolve) => writer.on('exit', resolve))
  t.after(() => writer.kill('SIGKILL'))
  writer.stdin.end(writes.join('\n'))

  const { shape, errors } = env.shape({ params: { table: 'counters' } })
  const initial = await env.rows(shape, 30_000)
  assert.ok(initial.length >= 5985, `initial sync delivered only ${initial.length} rows`)

  assert.ok(await settlesWithin(writerDone, 30_000), 'writer finished')
  assert.equal(writer.exitCode, 0, `writer failed: ${writerErr}`)

  const expected = (await env.query(`SELECT id, label, hits FROM counters ORDER BY id`)).map(([id, label, hits]) => ({
    id: Number(id),
    label,
    hits: BigInt(hits),
  }))
  const rows = await env.until(shape, (r) => r.length === expected.length && r.some((x) => x.id === 10_149), {
    timeout: 20_000,
    message: `Shape to catch up with the writer (${expected.length} rows)`,
  })
  const actual = sortBy(rows)
  const diffs = []
  for (let i = 0; i < Math.max(actual.length, expected.length); i++) {
    try {
      assert.deepStrictEqual(actual[i], expected[i])
    } catch {
      diffs.push(`#${i}: Shape ${show(actual[i])} vs table ${show(expected[i])}`)
      if (diffs.length > 10) break
    }
  }
  assert.deepEqual(diffs, [], `Shape differs from the table:\n${diffs.join('\n')}`)
  assert.deepEqual(errors, [])
})

test('the Shape keeps syncing across a restart of the sync service', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE items (id int4 PRIMARY KEY, title text NOT NULL);
    INSERT INTO items VALUES (1, 'before');`)
  const { shape, errors } = env.shape({ params: { table: 'items' } })
  assert.deepEqual(await env.rows(shape), [{ id: 1, title: 'before' }])
  await env.sql(`INSERT INTO items VALUES (2, 'live before restart')`)
  await env.until(shape, (r) => r.length === 2, { message: 'live insert before the restart' })

  // graceful restart; a change lands while the service is down
  await env.engine.down()
  await env.sql(`INSERT INTO items VALUES (3, 'while down'); UPDATE items SET title = 'edited while down' WHERE id = 1;`)
  await env.engine.up()

  await env.until(shape, (r) => r.length === 3 && r.find((x) => x.id === 1)?.title === 'edited while down', {
    timeout: 25_000,
    message: 'changes made while the service was down',
  })
  await env.sql(`INSERT INTO items VALUES (4, 'after restart'); DELETE FROM items WHERE id = 2;`)
  await env.until(shape, (r) => r.some((x) => x.id === 4) && !r.some((x) => x.id === 2), {
    timeout: 25_000,
    message: 'live changes after the restart',
  })
  assert.deepEqual(sortBy(shape.currentRows), [
    { id: 1, title: 'edited while down' },
    { id: 3, title: 'while down' },
    { id: 4, title: 'after restart' },
  ])

  // a second app instance starting now sees the same rows
  const late = env.shape({ params: { table: 'items' } })
  assert.deepEqual(sortBy(await env.rows(late.shape)), sortBy(shape.currentRows))
  assert.deepEqual(errors, [])
  assert.deepEqual(late.errors, [])
})

test('large (TOASTed) values survive updates of other columns, with replica default and full', T, async (t) => {
  const env = await cluster.newEnv(t)
  // ~16 kB of incompressible text per row, so Postgres stores it out of line (TOAST) and the
  // replication stream marks it "unchanged" when another column is updated
  await env.sql(`
    CREATE TABLE docs (id int4 PRIMARY KEY, title text NOT NULL, body text NOT NULL);
    INSERT INTO docs SELECT g, 'doc ' || g,
      (SELECT string_agg(md5(g::text || '-' || i::text), '') FROM generate_series(1, 500) i)
      FROM generate_series(1, 3) g;`)
  const bodies = new Map((await env.query(`SELECT id, body FROM docs`)).map(([id, body]) => [Number(id), body]))
  assert.equal(bodies.get(1).length, 16_000)

  const plain = env.shape({ params: { table: 'docs' } })
  const full = env.shape({ params: { table: 'docs', replica: 'full' } })
  await env.rows(plain.shape)
  await env.rows(full.shape)

  await env.sql(`UPDATE docs SET title = 'renamed ' || id WHERE id IN (1, 2);`)
  for (const [name, { shape, errors }] of Object.entries({ default: plain, full })) {
    const rows = await env.until(
      shape,
      (r) => r.filter((x) => x.title.startsWith('renamed')).length === 2,
      { message: `replica ${name}: title updates` },
    )
    for (const row of rows) {
      assert.equal(typeof row.body, 'string', `replica ${name}: row ${row.id} body is ${show(row.body)?.slice(0, 80)}`)
      assert.ok(row.body === bodies.get(row.id), `replica ${name}: row ${row.id} body changed (length ${row.body.length}, starts ${row.body.slice(0, 40)})`)
    }
    assert.deepEqual(errors, [])
  }
})

test('where on a column that is not selected: rows leave and join the Shape', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE todos (id int4 PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false);
    INSERT INTO todos VALUES (1, 'open one', false), (2, 'done one', true), (3, 'open two', false);`)
  const { shape, errors } = env.shape({ params: { table: 'todos', columns: ['id', 'title'], where: 'done = false' } })
  assert.deepEqual(sortBy(await env.rows(shape)), [
    { id: 1, title: 'open one' },
    { id: 3, title: 'open two' },
  ])
  await env.sql(`UPDATE todos SET done = true WHERE id = 1; UPDATE todos SET done = false WHERE id = 2;`)
  await env.until(shape, (r) => r.some((x) => x.id === 2) && !r.some((x) => x.id === 1), {
    message: 'row 1 leaves, row 2 joins',
  })
  assert.deepEqual(sortBy(shape.currentRows), [
    { id: 2, title: 'done one' },
    { id: 3, title: 'open two' },
  ])
  assert.deepEqual(errors, [])
})
