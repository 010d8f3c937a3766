// pglite-sync's multi-table sync (`syncShapesToTables`, built on @electric-sql/experimental's
// MultiShapeStream) applies a change of one table only once every other table's shape has named
// an up-to-date `global_last_seen_lsn` at or past that change's LSN. A shape with no changes of
// its own learns that LSN by a refresh: 100 ms after a change elsewhere, MultiShapeStream calls
// its `forceDisconnectAndRefresh()`, which aborts its long-poll and makes a non-live request at
// its offset, with the `cursor` of its live requests. That answer must be fresh.
//
// Found through the shipped nginx tier: the refresh URL of an idle shape repeats (same handle,
// offset and cursor) until its long-poll ends, so from the second change on nginx served the
// first refresh's up-to-date from its cache (catch-up answers: max-age 60 s) with its old LSN,
// and every other change to the busy table reached the app only after the idle table's
// long-poll ended (20 s by default; measured 39 s behind nginx, whose cache lock also made the
// re-issued long-poll wait behind the aborted one). Straight to the engine and through the
// proxy (which never keeps an answer at the tip) each change is applied after its refresh.
//
// Here: the engine holds long-polls 60 s, so no long-poll of the idle table ends during the
// test. Each of four inserts into the busy table must be applied in pglite while none of the
// idle table's long-polls has been answered since the insert: by the refresh, not by a
// long-poll's end. tests/cdn/test_refresh_through_nginx.py runs this file through nginx.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { freshPglite } from './pglite.mjs'
import { useCluster, waitFor, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 180_000 }
const HOLD = 60 // the engine's long-poll hold (s): longer than the test

test(`${VIA}: pglite-sync applies a change of one table as soon as the other table's refresh answers`, T, async (t) => {
  const env = await cluster.newEnv(t, { engineArgs: ['--long-poll-timeout', String(HOLD)] })
  await env.sql(`CREATE TABLE busy (id int PRIMARY KEY, v text); CREATE TABLE idle (id int PRIMARY KEY, v text);
                 INSERT INTO idle VALUES (1, 'one');`)
  const pg = await freshPglite()
  let sub = null
  t.after(async () => {
    sub?.unsubscribe()
    await pg.close()
  })
  await pg.exec(`CREATE TABLE busy (id int PRIMARY KEY, v text); CREATE TABLE idle (id int PRIMARY KEY, v text);`)

  // Every request of the idle table's stream, and when its answer arrived.
  const idleRequests = []
  const idleFetch = async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input.url ?? String(input))
    const entry = { url, status: null, cache: null, done: false, body: null }
    idleRequests.push(entry)
    const res = await fetch(input, init)
    entry.status = res.status
    entry.cache = res.headers.get('x-cache-status')
    entry.body = await res.clone().text().catch(() => null)
    entry.done = true
    return res
  }
  const liveAnswers = () => idleRequests.filter((r) => r.done && r.url.searchParams.get('live') === 'true').length
  const errors = []
  sub = await pg.electric.syncShapesToTables({
    key: null,
    shapes: {
      busy: { shape: { url: env.shapeUrl, params: { table: 'busy' } }, table: 'busy', primaryKey: ['id'] },
      idle: { shape: { url: env.shapeUrl, params: { table: 'idle' }, fetchClient: idleFetch }, table: 'idle', primaryKey: ['id'] },
    },
    onError: (err) => errors.push(String(err?.message ?? err)),
  })
  const requests = () => idleRequests.map((r) => `  ${r.status} ${r.cache ?? ''} ${r.url.search} ${r.body ?? ''}`).join('\n')
  await waitFor(async () => sub.isUpToDate && (await pg.query('SELECT 1 FROM idle')).rows.length === 1, {
    timeout: 30_000, message: 'the first sync of both tables', details: () => `${requests()}\n${env.logTail()}`,
  })

  for (let i = 1; i <= 4; i++) {
    const answeredBefore = liveAnswers()
    await env.sql(`INSERT INTO busy VALUES (${i}, 'row ${i}');`)
    await waitFor(async () => (await pg.query(`SELECT 1 FROM busy WHERE id = ${i}`)).rows.length === 1, {
      timeout: (HOLD + 30) * 1000,
      message: `busy row ${i} in pglite`,
      details: () => `idle table's requests:\n${requests()}\n${env.logTail()}`,
    })
    assert.equal(
      liveAnswers(),
      answeredBefore,
      `busy row ${i} was applied only after a long-poll of the idle table ended, not after its refresh;` +
        ` the idle table's requests:\n${requests()}`,
    )
  }
  assert.deepEqual(errors, [])
  assert.deepEqual((await pg.query('SELECT id FROM busy ORDER BY id')).rows.map((r) => r.id), [1, 2, 3, 4])
  sub.unsubscribe() // before the engine stops (the t.after hooks run in the order they were added)
})
