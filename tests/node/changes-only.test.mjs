// `log: 'changes_only'`: the Shape starts empty and the app pulls in the rows it needs with
// `shape.requestSnapshot({ where, params, orderBy, limit })` (subset snapshots). Afterwards the
// Shape follows live changes for those rows, and inserts of new rows.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, withTimeout, show } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

const ids = (rows) => rows.map((r) => r.id).sort((a, b) => a - b)

async function setup(t, streamOptions = {}) {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE tasks (id int4 PRIMARY KEY, title text NOT NULL, project text NOT NULL, rank int4);
    INSERT INTO tasks SELECT g, 'task ' || g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END, 100 - g
      FROM generate_series(1, 20) g;`)
  const { shape, stream, errors } = env.shape({ params: { table: 'tasks' }, log: 'changes_only', ...streamOptions })
  return { env, shape, stream, errors }
}

test('changes_only: the Shape starts empty; requestSnapshot loads the subset rows', T, async (t) => {
  const { env, shape, errors } = await setup(t)
  assert.deepEqual(await env.rows(shape), [], 'a changes_only Shape starts with no rows')
  assert.equal(shape.mode, 'changes_only')

  await withTimeout(
    shape.requestSnapshot({ where: 'project = $1 AND id <= $2', params: { 1: 'even', 2: '8' }, orderBy: 'id' }),
    15_000,
    'requestSnapshot (GET)',
  )
  await env.until(shape, (r) => r.length === 4, { message: 'subset rows in the Shape' })
  assert.deepEqual(
    [...shape.currentRows].sort((a, b) => a.id - b.id),
    [2, 4, 6, 8].map((id) => ({ id, title: `task ${id}`, project: 'even', rank: 100 - id })),
  )

  // limit + orderBy: the top-2 ranked odd tasks (lowest rank = highest id)
  await withTimeout(
    shape.requestSnapshot({ where: `project = 'odd'`, orderBy: 'rank ASC', limit: 2, method: 'POST' }),
    15_000,
    'requestSnapshot (POST, limit)',
  )
  await env.until(shape, (r) => r.length === 6, { message: 'second subset (POST, limit 2)' })
  assert.deepEqual(ids(shape.currentRows), [2, 4, 6, 8, 17, 19])
  assert.equal(shape.error, false)
  assert.deepEqual(errors, [])
})

test('changes_only: after a snapshot, live changes apply to loaded rows and new inserts', T, async (t) => {
  const { env, shape, errors } = await setup(t)
  assert.deepEqual(await env.rows(shape), [])
  await withTimeout(
    shape.requestSnapshot({ where: 'id IN ($1, $2, $3)', params: { 1: '1', 2: '2', 3: '3' } }),
    15_000,
    'requestSnapshot',
  )
  await env.until(shape, (r) => r.length === 3, { message: 'subset rows 1-3' })

  // update + delete of loaded rows, update of a row that was never loaded, and a new row
  await env.sql(`
    UPDATE tasks SET title = 'task 2 (edited)' WHERE id = 2;
    DELETE FROM tasks WHERE id = 3;
    UPDATE tasks SET title = 'never loaded' WHERE id = 15;
    INSERT INTO tasks VALUES (21, 'brand new', 'odd', 0);`)
  await env.until(
    shape,
    (r) => r.some((x) => x.id === 21) && !r.some((x) => x.id === 3) && r.find((x) => x.id === 2)?.title === 'task 2 (edited)',
    { message: 'live changes after the snapshot' },
  )
  assert.deepEqual(
    [...shape.currentRows].sort((a, b) => a.id - b.id),
    [
      { id: 1, title: 'task 1', project: 'odd', rank: 99 },
      { id: 2, title: 'task 2 (edited)', project: 'even', rank: 98 },
      { id: 21, title: 'brand new', project: 'odd', rank: 0 },
    ],
    `Shape rows: ${show(shape.currentRows)}`,
  )
  assert.deepEqual(errors, [])
})

test('changes_only over SSE: requestSnapshot and live changes', T, async (t) => {
  const { env, shape, errors } = await setup(t, { liveSse: true })
  assert.deepEqual(await env.rows(shape), [])
  await withTimeout(shape.requestSnapshot({ where: 'id > $1', params: { 1: '18' } }), 15_000, 'requestSnapshot')
  await env.until(shape, (r) => ids(r).join() === '19,20', { message: 'subset rows 19, 20' })
  await env.sql(`UPDATE tasks SET rank = -1 WHERE id = 20; INSERT INTO tasks VALUES (22, 'x', 'even', 5);`)
  await env.until(shape, (r) => r.find((x) => x.id === 20)?.rank === -1 && r.some((x) => x.id === 22), {
    message: 'live changes over SSE after the snapshot',
  })
  assert.deepEqual(ids(shape.currentRows), [19, 20, 22])
  assert.deepEqual(errors, [])
})
