// The everyday frontend flows with the real @electric-sql/client (long polling):
// initial sync, live insert/update/delete, where + params, columns, replica=full.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, sortBy, show } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

const ITEMS_DDL = `
  CREATE TABLE items (
    id int4 PRIMARY KEY,
    title text NOT NULL,
    priority int4,
    status text,
    views int8 DEFAULT 0
  );`

test('initial sync: Shape holds exactly the rows in the table', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`${ITEMS_DDL}
    INSERT INTO items (id, title, priority, status, views) VALUES
      (1, 'first', 1, 'open', 10),
      (2, 'second', NULL, 'done', 9007199254740993),
      (3, 'third', 3, NULL, 0);`)

  const { shape, errors } = env.shape({ params: { table: 'items' } })
  const rows = await env.rows(shape)

  assert.deepEqual(sortBy(rows), [
    { id: 1, title: 'first', priority: 1, status: 'open', views: 10n },
    { id: 2, title: 'second', priority: null, status: 'done', views: 9007199254740993n },
    { id: 3, title: 'third', priority: 3, status: null, views: 0n },
  ])
  assert.equal(shape.isUpToDate, true)
  assert.equal(shape.error, false)
  assert.deepEqual(errors, [])
})

test('initial sync of an empty table gives an empty, up-to-date Shape', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(ITEMS_DDL)
  const { shape } = env.shape({ params: { table: 'items' } })
  assert.deepEqual(await env.rows(shape), [])
  assert.equal(shape.isUpToDate, true)
})

test('live insert, update and delete reach the Shape', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`${ITEMS_DDL}
    INSERT INTO items VALUES (1, 'one', 1, 'open', 1), (2, 'two', 2, 'open', 2);`)

  const { shape } = env.shape({ params: { table: 'items' } })
  assert.equal((await env.rows(shape)).length, 2)

  const notified = []
  shape.subscribe(({ rows }) => notified.push(rows.length))

  // insert
  await env.sql(`INSERT INTO items VALUES (3, 'three', 3, 'open', 3)`)
  await env.until(shape, (r) => r.length === 3, { message: 'live insert of id 3' })
  assert.deepEqual(
    shape.currentRows.find((r) => r.id === 3),
    { id: 3, title: 'three', priority: 3, status: 'open', views: 3n },
  )

  // update of some columns: the other columns keep their values
  await env.sql(`UPDATE items SET title = 'one (edited)', status = NULL WHERE id = 1`)
  await env.until(shape, (r) => r.find((x) => x.id === 1)?.title === 'one (edited)', {
    message: 'live update of id 1',
  })
  assert.deepEqual(
    shape.currentRows.find((r) => r.id === 1),
    { id: 1, title: 'one (edited)', priority: 1, status: null, views: 1n },
  )

  // delete
  await env.sql(`DELETE FROM items WHERE id = 2`)
  await env.until(shape, (r) => !r.some((x) => x.id === 2), { message: 'live delete of id 2' })

  // a multi-statement transaction lands as a whole
  await env.sql(`BEGIN;
    INSERT INTO items VALUES (4, 'four', 4, 'open', 4);
    UPDATE items SET views = views + 100 WHERE id = 3;
    DELETE FROM items WHERE id = 1;
    INSERT INTO items VALUES (5, 'five', 5, 'open', 5);
    COMMIT;`)
  await env.until(shape, (r) => r.length === 3 && r.some((x) => x.id === 5), {
    message: 'transaction with insert/update/delete',
  })
  assert.deepEqual(sortBy(shape.currentRows), [
    { id: 3, title: 'three', priority: 3, status: 'open', views: 103n },
    { id: 4, title: 'four', priority: 4, status: 'open', views: 4n },
    { id: 5, title: 'five', priority: 5, status: 'open', views: 5n },
  ])

  // a primary-key change moves the row to its new key
  await env.sql(`UPDATE items SET id = 50 WHERE id = 5`)
  await env.until(shape, (r) => r.some((x) => x.id === 50) && !r.some((x) => x.id === 5), {
    message: 'primary key change 5 -> 50',
  })
  assert.deepEqual(
    shape.currentRows.find((r) => r.id === 50),
    { id: 50, title: 'five', priority: 5, status: 'open', views: 5n },
  )

  // the Shape still matches the table after a burst of changes
  await env.sql(`INSERT INTO items SELECT g, 'bulk ' || g, g, 'open', g FROM generate_series(100, 199) g;
                 UPDATE items SET priority = -priority WHERE id BETWEEN 150 AND 159;
                 DELETE FROM items WHERE id BETWEEN 100 AND 109;`)
  await env.until(shape, (r) => r.length === 3 + 90, { message: '90 bulk rows' })
  const row155 = shape.currentRows.find((r) => r.id === 155)
  assert.deepEqual(row155, { id: 155, title: 'bulk 155', priority: -155, status: 'open', views: 155n })
  assert.ok(notified.length > 0, 'Shape subscribers were notified of live changes')
})

test('where with params: only matching rows, and rows move in and out live', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`${ITEMS_DDL}
    INSERT INTO items (id, title, priority, status) VALUES
      (1, 'a', 5, 'open'),
      (2, 'b', 1, 'open'),
      (3, 'c', 9, 'done'),
      (4, 'd', 7, 'open');`)

  const { shape, errors } = env.shape({
    params: { table: 'items', where: 'priority >= $1 AND status = $2', params: ['5', 'open'] },
  })
  const ids = (rows) => rows.map((r) => r.id).sort((a, b) => a - b)
  assert.deepEqual(ids(await env.rows(shape)), [1, 4])

  // a matching insert appears, a non-matching one does not
  await env.sql(`INSERT INTO items (id, title, priority, status) VALUES (5, 'e', 6, 'open'), (6, 'f', 6, 'done')`)
  await env.until(shape, (r) => r.some((x) => x.id === 5), { message: 'matching insert' })
  // moves into the shape: row 2 now matches
  await env.sql(`UPDATE items SET priority = 8 WHERE id = 2`)
  await env.until(shape, (r) => r.some((x) => x.id === 2), { message: 'row 2 moving in' })
  assert.deepEqual(
    shape.currentRows.find((r) => r.id === 2),
    { id: 2, title: 'b', priority: 8, status: 'open', views: 0n },
    'a row that moves into the shape arrives complete',
  )
  // moves out of the shape: row 1 is closed
  await env.sql(`UPDATE items SET status = 'done' WHERE id = 1`)
  await env.until(shape, (r) => !r.some((x) => x.id === 1), { message: 'row 1 moving out' })
  // an update inside the shape
  await env.sql(`UPDATE items SET title = 'd!' WHERE id = 4`)
  await env.until(shape, (r) => r.find((x) => x.id === 4)?.title === 'd!', { message: 'update of row 4' })
  // a change to a row outside the shape that keeps it outside
  await env.sql(`UPDATE items SET title = 'still done' WHERE id = 3; UPDATE items SET priority = 10 WHERE id = 6`)
  // a marker change so we know the previous transaction has been processed
  await env.sql(`INSERT INTO items (id, title, priority, status) VALUES (7, 'marker', 100, 'open')`)
  await env.until(shape, (r) => r.some((x) => x.id === 7), { message: 'marker row' })

  assert.deepEqual(ids(shape.currentRows), [2, 4, 5, 7])
  assert.deepEqual(errors, [])
})

test('where with object params and a string literal containing a quote', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`${ITEMS_DDL}
    INSERT INTO items (id, title) VALUES (1, 'it''s here'), (2, 'not here'), (3, 'it''s also here');`)
  const { shape } = env.shape({
    params: { table: 'items', where: `title LIKE $1 OR id = $2`, params: { 1: "it's%", 2: '2' } },
  })
  const rows = await env.rows(shape)
  assert.deepEqual(rows.map((r) => r.id).sort(), [1, 2, 3])
  await env.sql(`INSERT INTO items (id, title) VALUES (4, 'it''s new'), (5, 'other')`)
  await env.until(shape, (r) => r.some((x) => x.id === 4), { message: 'matching insert 4' })
  await env.sql(`INSERT INTO items (id, title) VALUES (6, 'it''s a marker')`)
  await env.until(shape, (r) => r.some((x) => x.id === 6), { message: 'marker 6' })
  assert.ok(!shape.currentRows.some((r) => r.id === 5))
})

test('columns: the Shape only holds the selected columns', T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE todos (
      id int4 PRIMARY KEY,
      title text,
      "isDone" bool NOT NULL DEFAULT false,
      secret text
    );
    INSERT INTO todos VALUES (1, 'buy milk', false, 's1'), (2, 'walk dog', true, 's2');`)

  const { shape, errors } = env.shape({ params: { table: 'todos', columns: ['id', 'title', 'isDone'] } })
  assert.deepEqual(sortBy(await env.rows(shape)), [
    { id: 1, title: 'buy milk', isDone: false },
    { id: 2, title: 'walk dog', isDone: true },
  ])

  // live insert carries only the selected columns
  await env.sql(`INSERT INTO todos VALUES (3, 'cook', false, 's3')`)
  await env.until(shape, (r) => r.length === 3, { message: 'insert of todo 3' })
  assert.deepEqual(shape.currentRows.find((r) => r.id === 3), { id: 3, title: 'cook', isDone: false })

  // updating only a non-selected column changes nothing visible
  await env.sql(`UPDATE todos SET secret = 'changed' WHERE id = 1`)
  // updating a selected column is reflected
  await env.sql(`UPDATE todos SET "isDone" = true WHERE id = 1`)
  await env.until(shape, (r) => r.find((x) => x.id === 1)?.isDone === true, { message: 'isDone update' })
  await env.sql(`DELETE FROM todos WHERE id = 2`)
  await env.until(shape, (r) => r.length === 2, { message: 'delete of todo 2' })

  assert.deepEqual(sortBy(shape.currentRows), [
    { id: 1, title: 'buy milk', isDone: true },
    { id: 3, title: 'cook', isDone: false },
  ])
  for (const r of shape.currentRows) assert.ok(!('secret' in r), `row ${show(r)} leaks the secret column`)
  assert.deepEqual(errors, [])
})

test("replica: 'full' delivers whole rows on update and delete", T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`${ITEMS_DDL}
    INSERT INTO items VALUES (1, 'one', 1, 'open', 1), (2, 'two', 2, 'open', 2);`)

  const { stream, shape } = env.shape({ params: { table: 'items', replica: 'full' } })
  const changes = []
  stream.subscribe((messages) => {
    for (const m of messages) if ('key' in m) changes.push(m)
  })
  assert.equal((await env.rows(shape)).length, 2)

  await env.sql(`UPDATE items SET title = 'ONE' WHERE id = 1`)
  await env.until(shape, (r) => r.find((x) => x.id === 1)?.title === 'ONE', { message: 'update of id 1' })
  await env.sql(`DELETE FROM items WHERE id = 2`)
  await env.until(shape, (r) => r.length === 1, { message: 'delete of id 2' })

  assert.deepEqual(shape.currentRows, [{ id: 1, title: 'ONE', priority: 1, status: 'open', views: 1n }])

  const update = changes.find((m) => m.headers.operation === 'update')
  assert.ok(update, `no update message among ${show(changes)}`)
  assert.deepEqual(update.value, { id: 1, title: 'ONE', priority: 1, status: 'open', views: 1n },
    'update carries the full new row')
  assert.deepEqual(update.old_value, { title: 'one' }, 'old_value holds the previous values of changed columns')

  const del = changes.find((m) => m.headers.operation === 'delete')
  assert.ok(del, `no delete message among ${show(changes)}`)
  assert.deepEqual(del.value, { id: 2, title: 'two', priority: 2, status: 'open', views: 2n },
    'delete carries the full old row')
})
