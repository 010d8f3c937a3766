// After a TRUNCATE the shape is rotated: clients must end up with the table's new contents,
// never the old snapshot. Run direct and through the proxy (whose response cache is on): a
// cached answer of the dead shape must never be served again.
//
// - An app that keeps its own local store (as pglite-sync does) clears it on `must-refetch`
//   and re-applies what follows: after several truncates, under writes, it equals SELECT.
// - A brand-new client's very first request after the truncate names the new handle and holds
//   the new rows.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, ShapeStream, show, waitFor, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 90_000 }

/** A local store fed by a ShapeStream: cleared on must-refetch, like pglite-sync's table. */
function localStore(env) {
  const aborter = new AbortController()
  env.aborters.push(aborter)
  const rows = new Map()
  const state = { rows, refetches: 0, upToDate: false, errors: [], handle: null }
  const stream = new ShapeStream({
    url: env.shapeUrl,
    params: { table: 'items' },
    signal: aborter.signal,
    fetchClient: env.recordingFetch,
    onError: (err) => {
      state.errors.push(err)
    },
  })
  stream.subscribe((messages) => {
    for (const m of messages) {
      const control = m.headers?.control
      if (control === 'must-refetch') {
        rows.clear()
        state.refetches += 1
        state.upToDate = false
      } else if (control === 'up-to-date') {
        state.upToDate = true
      } else if ('key' in m) {
        const op = m.headers.operation
        if (op === 'delete') rows.delete(m.key)
        else rows.set(m.key, { ...(rows.get(m.key) ?? {}), ...m.value })
      }
    }
    state.handle = stream.shapeHandle
  })
  return state
}

const sorted = (rows) => [...rows].map((r) => ({ id: Number(r.id), title: r.title })).sort((a, b) => a.id - b.id)

async function tableRows(env) {
  return (await env.query('SELECT id, title FROM items ORDER BY id')).map(([id, title]) => ({ id: Number(id), title }))
}

async function setup(t) {
  const env = await cluster.newEnv(t)
  await env.sql(`
    CREATE TABLE items (id int4 PRIMARY KEY, title text NOT NULL);
    INSERT INTO items SELECT g, 'old ' || g FROM generate_series(1, 50) g;`)
  return env
}

test(`${VIA}: a local store that resyncs on must-refetch ends equal to SELECT after truncates`, T, async (t) => {
  const env = await setup(t)
  const store = localStore(env)
  await waitFor(() => store.upToDate && store.rows.size === 50, { message: 'initial sync of 50 rows' })

  for (let cycle = 1; cycle <= 3; cycle++) {
    const refetchesBefore = store.refetches
    await env.sql(`BEGIN; TRUNCATE items;
      INSERT INTO items SELECT g, 'gen ${cycle} ' || g FROM generate_series(${cycle * 100}, ${cycle * 100 + 9}) g;
      COMMIT;`)
    await env.sql(`UPDATE items SET title = title || ' (edited)' WHERE id % 2 = 0;
                   DELETE FROM items WHERE id = ${cycle * 100 + 9};`)
    const expected = await tableRows(env)
    await waitFor(
      () => store.refetches > refetchesBefore && store.upToDate && show(sorted(store.rows.values())) === show(expected),
      {
        timeout: 30_000,
        message: `cycle ${cycle}: the local store to equal SELECT after the truncate`,
        details: () =>
          `store: ${show(sorted(store.rows.values()))}\nexpected: ${show(expected)}\nrequests:\n` +
          env.requests.slice(-12).map((r) => `  ${r.status} ${r.url}`).join('\n') + `\n${env.logTail()}`,
      },
    )
  }
  assert.deepEqual(store.errors, [])
})

test(`${VIA}: a brand-new client after a truncate gets the new handle and rows on its first request`, T, async (t) => {
  const env = await setup(t)
  // A first client populates every cache between it and the engine with the old shape.
  const first = localStore(env)
  await waitFor(() => first.upToDate && first.rows.size === 50, { message: 'first client synced' })
  const oldHandle = first.handle
  const url = `${env.shapeUrl}?table=items&offset=-1`
  const before = await fetch(url)
  await before.arrayBuffer()
  assert.equal(before.headers.get('electric-handle'), oldHandle)

  await env.sql(`BEGIN; TRUNCATE items; INSERT INTO items VALUES (1000, 'new'); COMMIT;`)
  // The engine learns of the truncate through replication; wait until it has rotated the shape
  // (the first client was told: it moved to a new handle).
  await waitFor(() => first.handle && first.handle !== oldHandle && first.upToDate, {
    timeout: 30_000,
    message: 'the engine to rotate the shape after the truncate',
  })

  const res = await fetch(url) // the same URL a brand-new client sends first
  const body = await res.json()
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('electric-handle'), first.handle, 'the first answer names the new shape')
  const rows = body.filter((m) => 'key' in m).map((m) => m.value)
  assert.deepEqual(sorted(rows), [{ id: 1000, title: 'new' }], `first answer rows: ${show(rows)}`)
})
