// Electric's client test suites (@electric-sql/react's and the typescript client's) start with a
// global setup that fetches the server's root URL and stops everything unless it answers 2xx.
// Electric answers `GET /` with an empty 200, and so does the engine; through the proxy the same
// probe must pass too (it was a 404 there, so none of those suites could run through the proxy).
// The suite then syncs through `url: <root>/v1/shape`: checked here with the React hooks' own
// shape cache (`preloadShape`, what `useShape` renders from).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { preloadShape } from '@electric-sql/react'
import { useCluster, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

test(`${VIA}: the server's root answers 200, as Electric's suites' global setup requires`, T, async (t) => {
  const env = await cluster.newEnv(t)
  const root = env.shapeUrl.slice(0, -'/v1/shape'.length)
  const res = await fetch(root)
  assert.equal(res.status, 200, await res.text())
  assert.ok(res.ok)
  const head = await fetch(`${root}/`, { method: 'POST' })
  await head.arrayBuffer()
  assert.ok(head.status >= 400, `POST / is not a way in (got ${head.status})`)

  await env.sql(`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);
                 INSERT INTO items VALUES (1, 'one'), (2, 'two');`)
  const aborter = new AbortController()
  t.after(() => aborter.abort())
  const shape = await preloadShape({ url: `${root}/v1/shape`, params: { table: 'items' }, signal: aborter.signal })
  assert.deepEqual(
    shape.currentRows.map((r) => ({ ...r })).sort((a, b) => a.id - b.id),
    [
      { id: 1, title: 'one' },
      { id: 2, title: 'two' },
    ],
  )
})
