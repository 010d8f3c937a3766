// One transaction much larger than the chunk size: the engine cuts its log by size inside the
// transaction, as Electric does, so no live or catch-up response is much larger than a chunk,
// and the real client still gets every row exactly once, with up-to-date only at the end.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, sortBy } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 90_000 }
const CHUNK = 10_240
const ROWS = 60 // x ~1.1 kB each: about 6.5x the chunk size, in one transaction
const TEXT = 1000

/** A fetch that records the size of every shape response body (long polling only). */
function measuringFetch(responses) {
  return async (input, init) => {
    const url = typeof input === 'string' ? input : input.url ?? String(input)
    const res = await fetch(input, init)
    const size = res.status === 200 ? (await res.clone().arrayBuffer()).byteLength : 0
    responses.push({ url, status: res.status, size })
    return res
  }
}

async function setup(t) {
  const env = await cluster.newEnv(t, { engineArgs: ['--chunk-bytes', String(CHUNK)] })
  await env.sql(`CREATE TABLE big (id int4 PRIMARY KEY, body text NOT NULL);
                 INSERT INTO big VALUES (1, 'first'), (2, 'second');`)
  return env
}

const bigTransaction = `INSERT INTO big SELECT g, repeat(chr(97 + g % 26), ${TEXT})
                          FROM generate_series(100, ${99 + ROWS}) g;`

/** Subscribe to a stream and record, per key, how often it was inserted, and which batches
 * ended with up-to-date while the big transaction was only partly delivered. */
function watch(stream) {
  const seen = new Map()
  const partialUpToDate = []
  stream.subscribe((messages) => {
    for (const m of messages) {
      if (m.headers?.operation === 'insert') seen.set(m.key, (seen.get(m.key) ?? 0) + 1)
      if (m.headers?.control === 'up-to-date') {
        const got = [...seen.keys()].filter((k) => /"1\d\d"$/.test(k)).length
        if (got > 0 && got < ROWS) partialUpToDate.push(got)
      }
    }
  })
  return { seen, partialUpToDate }
}

async function expectAll(env, shape) {
  const expected = (await env.query(`SELECT id, body FROM big`)).map(([id, body]) => ({ id: Number(id), body }))
  await env.until(shape, (rows) => rows.length === 2 + ROWS, { message: 'every row of the big transaction' })
  assert.deepEqual(sortBy(shape.currentRows), sortBy(expected))
}

test('long polling: a transaction of 6x the chunk size arrives whole, once, in chunk-sized responses', T, async (t) => {
  const env = await setup(t)
  const responses = []
  const { stream, shape, errors } = env.shape({ params: { table: 'big' }, fetchClient: measuringFetch(responses) })
  const { seen, partialUpToDate } = watch(stream)
  assert.equal((await env.rows(shape)).length, 2)
  const before = responses.length
  await env.sql(bigTransaction)
  await expectAll(env, shape)

  const live = responses.slice(before).filter((r) => r.status === 200 && r.size > 100)
  const sizes = live.map((r) => r.size)
  assert.ok(live.length >= 5, `the transaction came in ${live.length} responses: ${sizes}`)
  // about one chunk: the entry that crosses the threshold is the only excess
  assert.ok(Math.max(...sizes) <= CHUNK + 2 * (TEXT + 300), `response sizes ${sizes}`)
  assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], 'every row inserted exactly once')
  assert.deepEqual(partialUpToDate, [], 'no up-to-date before the transaction was complete')
  assert.deepEqual(errors, [])

  // A new client catching up through the same log gets the same rows, in chunk-sized pieces.
  const later = []
  const fresh = env.shape({ params: { table: 'big' }, fetchClient: measuringFetch(later) })
  await expectAll(env, fresh.shape)
  const catchUp = later.filter((r) => r.status === 200 && r.size > 100 && !/offset=-1/.test(r.url))
  assert.ok(catchUp.length >= 5 && Math.max(...catchUp.map((r) => r.size)) <= CHUNK + 2 * (TEXT + 300),
    `catch-up sizes ${catchUp.map((r) => r.size)}`)
  assert.deepEqual(fresh.errors, [])
})

test('SSE: a transaction of 6x the chunk size arrives whole and once', T, async (t) => {
  const env = await setup(t)
  const { stream, shape, errors } = env.shape({ params: { table: 'big' }, liveSse: true })
  const { seen, partialUpToDate } = watch(stream)
  assert.equal((await env.rows(shape)).length, 2)
  await env.sql(bigTransaction)
  await expectAll(env, shape)
  await env.sql(`UPDATE big SET body = 'after' WHERE id = 1;`)
  await env.until(shape, (rows) => rows.find((r) => r.id === 1)?.body === 'after', { message: 'a later update' })
  assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], 'every row inserted exactly once')
  assert.deepEqual(partialUpToDate, [])
  assert.equal(shape.currentRows.length, 2 + ROWS)
  assert.deepEqual(errors, [])
})
