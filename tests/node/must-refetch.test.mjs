// TRUNCATE invalidates the shape: the server answers 409 must-refetch, the client's Shape
// clears itself and resyncs. What the app sees afterwards is exactly the table's new contents.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, show } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

const ids = (rows) => rows.map((r) => r.id).sort((a, b) => a - b)

async function setup(t) {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE items (id int4 PRIMARY KEY, title text NOT NULL);
    INSERT INTO items VALUES (1, 'old 1'), (2, 'old 2'), (3, 'old 3');`)
  const { shape, errors } = env.shape({ params: { table: 'items' } })
  assert.deepEqual(ids(await env.rows(shape)), [1, 2, 3])
  // every state the app is notified about must be a real state of the table:
  // never a mix of pre-truncate and post-truncate rows
  const seen = []
  shape.subscribe(({ rows }) => seen.push(ids(rows)))
  return { env, shape, errors, seen }
}

function assertNoMixedStates(seen) {
  for (const s of seen) {
    const hasOld = s.some((id) => id <= 3)
    const hasNew = s.some((id) => id >= 10)
    assert.ok(!(hasOld && hasNew), `a subscriber saw old and new rows together: ${show(seen)}`)
  }
}

test('TRUNCATE then inserts: Shape ends up with only the new rows', T, async (t) => {
  const { env, shape, errors, seen } = await setup(t)
  const handleBefore = shape.handle

  await env.sql(`TRUNCATE items;`)
  await env.sql(`INSERT INTO items VALUES (10, 'new 10'), (11, 'new 11');`)

  const rows = await env.until(shape, (r) => ids(r).join() === '10,11', {
    message: 'Shape to hold exactly the post-truncate rows [10, 11]',
  })
  assert.deepEqual(
    [...rows].sort((a, b) => a.id - b.id),
    [{ id: 10, title: 'new 10' }, { id: 11, title: 'new 11' }],
  )

  // the resynced shape keeps streaming live changes
  await env.sql(`INSERT INTO items VALUES (12, 'new 12'); UPDATE items SET title = 'NEW 10' WHERE id = 10;`)
  await env.until(shape, (r) => r.length === 3 && r.find((x) => x.id === 10)?.title === 'NEW 10', {
    message: 'live changes after the resync',
  })
  assert.deepEqual(ids(shape.currentRows), [10, 11, 12])
  assert.notEqual(shape.handle, handleBefore, 'the client moved to a new shape handle')
  assert.equal(shape.error, false)
  assert.deepEqual(errors, [])
  assertNoMixedStates(seen)
})

test('TRUNCATE and inserts in one transaction: Shape holds only the new rows', T, async (t) => {
  const { env, shape, errors, seen } = await setup(t)

  await env.sql(`BEGIN; TRUNCATE items; INSERT INTO items VALUES (10, 'new 10'), (11, 'new 11'); COMMIT;`)

  await env.until(shape, (r) => ids(r).join() === '10,11', {
    message: 'Shape to hold exactly the post-truncate rows [10, 11]',
  })
  assert.deepEqual(errors, [])
  assertNoMixedStates(seen)
})

test('TRUNCATE alone empties the Shape; later inserts then show up', T, async (t) => {
  const { env, shape, errors, seen } = await setup(t)

  await env.sql(`TRUNCATE items;`)
  await env.until(shape, (r) => r.length === 0, { message: 'Shape to become empty after TRUNCATE' })
  // let the client settle on the new shape (it goes live again)
  await env.until(shape, () => shape.isUpToDate, { message: 'Shape up to date after resync' })

  await env.sql(`INSERT INTO items VALUES (20, 'after');`)
  await env.until(shape, (r) => ids(r).join() === '20', { message: 'insert after the resync' })

  // and a second truncate cycle works the same way
  await env.sql(`TRUNCATE items; INSERT INTO items VALUES (30, 'third generation');`)
  await env.until(shape, (r) => ids(r).join() === '30', { message: 'second TRUNCATE cycle' })
  assert.deepEqual(shape.currentRows, [{ id: 30, title: 'third generation' }])
  assert.deepEqual(errors, [])
  assertNoMixedStates(seen)
})
