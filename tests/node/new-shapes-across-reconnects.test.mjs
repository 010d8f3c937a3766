// New shapes around a lost Postgres connection, found by chaos.test.mjs and reduced to their
// steps: a client must neither be refused (a 400 ends its ShapeStream for good) nor be handed a
// change its snapshot already holds (applied twice).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, sleep, waitFor, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 90_000 }

/** Follow a shape from -1 to its up-to-date (non-live); returns its messages. */
async function snapshotAndLog(url) {
  let res = await fetch(`${url}&offset=-1`)
  assert.equal(res.status, 200, await res.clone().text())
  let messages = await res.json()
  const handle = res.headers.get('electric-handle')
  for (let i = 0; i < 50 && !res.headers.has('electric-up-to-date'); i++) {
    res = await fetch(`${url}&offset=${res.headers.get('electric-offset')}&handle=${handle}`)
    assert.equal(res.status, 200, await res.clone().text())
    messages = messages.concat(await res.json())
  }
  return messages
}

test(`${VIA}: the first new shape after a Postgres restart is served, not refused`, T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`CREATE TABLE items (id int4 PRIMARY KEY, n int4); INSERT INTO items VALUES (1, 1), (2, 5);`)
  await snapshotAndLog(`${env.shapeUrl}?table=items`)
  await env.engine.restart() // its first new shape of the table adds it to the publication again
  await snapshotAndLog(`${env.shapeUrl}?table=items`) // the table's description, cached a moment
  await cluster.restart('fast') // the engine's catalog connection is gone
  const res = await fetch(`${env.shapeUrl}?table=items&offset=-1&where=${encodeURIComponent('n > 1')}`)
  const body = await res.text()
  // 200, or a 503 the client retries: never a 400, which ends the client's stream
  assert.ok(res.status === 200 || res.status === 503, `${res.status} ${body}`)
  const rows = await waitFor(
    async () => {
      const r = await fetch(`${env.shapeUrl}?table=items&offset=-1&where=${encodeURIComponent('n > 1')}`)
      return r.status === 200 && (await r.json()).filter((m) => m.key)
    },
    { timeout: 20_000, message: 'the new shape served', details: () => env.logTail() },
  )
  assert.deepEqual(rows.map((m) => m.value.id), ['2'])
})

test(`${VIA}: a shape made just before the replication connection drops gets no change twice`, T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`CREATE TABLE items (id int4 PRIMARY KEY, n int4, title text);
                 INSERT INTO items SELECT g, g, 't' FROM generate_series(1, 5) g;`)
  await snapshotAndLog(`${env.shapeUrl}?table=items`)
  await env.sql(`INSERT INTO items VALUES (10, 70, 'before the shape');`) // T1
  const url = `${env.shapeUrl}?table=items&where=${encodeURIComponent('n > 50')}`
  const first = await snapshotAndLog(url) // its snapshot holds row 10
  assert.deepEqual(first.filter((m) => m.key).map((m) => m.value.id), ['10'])
  await env.sql(`UPDATE items SET title = 'u' WHERE id = 2;`) // after the snapshot; not in the shape
  await sleep(500)
  // The slot sends again from its confirmed position (before T1: it is confirmed every 10 s).
  await env.sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_replication;`)
  await sleep(1500)
  await env.sql(`UPDATE items SET n = 80 WHERE id = 3;`) // joins the shape
  const messages = await waitFor(
    async () => {
      const m = await snapshotAndLog(url)
      return m.some((x) => x.value?.id === '3') && m
    },
    { timeout: 20_000, message: 'row 3 in the shape', details: () => env.logTail() },
  )
  const changes = messages.filter((m) => m.key).map((m) => `${m.headers.operation} ${m.value.id}`)
  assert.deepEqual(changes, ['insert 10', 'insert 3'], 'row 10 once (the snapshot), then row 3')
})
