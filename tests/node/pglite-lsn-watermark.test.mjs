// `global_last_seen_lsn` is a promise: every change of the shape committed at or before that LSN
// has been delivered. @electric-sql/pglite-sync relies on it: it remembers the LSN of each
// up-to-date and drops any later change whose `lsn` header is not above it, as already applied
// (and it persists that LSN to resume from). An engine that names a transaction in an up-to-date
// before the shape's log serves it loses that transaction for such a client, for good.
//
// Found with Electric's pglite-sync e2e suite ("resumes sync after unsubscribe" lost the row
// inserted while unsubscribed): the engine counted a commit as seen when it read it from the
// replication stream, before the shape log's write (fsync, then publish) made it readable.
//
// Here: one writer commits many small transactions while readers poll the shape at its tip
// (non-live, the way a client catching up does) as fast as they can. For every response the
// test records the up-to-date's LSN; no change may ever arrive with an `lsn` at or below an LSN
// already announced. Then pglite-sync itself, resuming a persisted subscription, must end up
// with exactly the table's rows.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { freshPglite } from './pglite.mjs'
import { useCluster, waitFor, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 120_000 }

/** Commit `count` single-row inserts, each its own transaction (psql autocommit), in one psql. */
function insertMany(env, count, from = 1) {
  const lines = []
  for (let i = from; i < from + count; i++) lines.push(`INSERT INTO items (id, title) VALUES (${i}, 'row ${i}');`)
  return new Promise((resolve, reject) => {
    const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', env.dbUrl, '-f', '-'], {
      stdio: ['pipe', 'ignore', 'pipe'],
    })
    let err = ''
    child.stderr.on('data', (d) => (err += d))
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}: ${err}`))))
    child.stdin.end(lines.join('\n') + '\n')
  })
}

async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) })
  const body = await res.text()
  if (res.status !== 200) throw new Error(`${res.status} ${url}: ${body}`)
  return { res, messages: JSON.parse(body) }
}

test(`${VIA}: no change arrives at or below an LSN an up-to-date already named`, T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);`)
  const base = `${env.shapeUrl}?table=items`

  // The snapshot, then the first catch-up to the tip.
  const first = await getJson(`${base}&offset=-1`)
  const handle = first.res.headers.get('electric-handle')
  let offset = first.res.headers.get('electric-offset')

  let writing = true
  const writer = insertMany(env, 400).finally(() => {
    writing = false
  })

  const violations = []
  let announced = -1n // the highest global_last_seen_lsn seen so far
  let delivered = 0
  let responses = 0
  while (writing || responses < 3 || delivered < 400) {
    const { res, messages } = await getJson(`${base}&handle=${handle}&offset=${offset}`)
    responses++
    for (const m of messages) {
      if (m.headers?.control === 'up-to-date') continue
      if (!('key' in m)) continue
      delivered++
      const lsn = BigInt(m.headers.lsn)
      if (lsn <= announced) violations.push(`${m.key} at lsn ${lsn}, but ${announced} was announced before`)
    }
    const last = messages.at(-1)
    if (last?.headers?.control === 'up-to-date') {
      const gls = BigInt(last.headers.global_last_seen_lsn)
      if (gls > announced) announced = gls
    }
    offset = res.headers.get('electric-offset')
    if (!writing && responses > 5000) break
  }
  await writer
  assert.equal(delivered, 400, 'every inserted row was delivered once')
  assert.deepEqual(violations.slice(0, 5), [], `${violations.length} change(s) arrived below an announced LSN`)
})

test(`${VIA}: pglite-sync resuming a persisted subscription gets every row written meanwhile`, T, async (t) => {
  const env = await cluster.newEnv(t)
  await env.sql(`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);`)
  const pg = await freshPglite()
  t.after(() => pg.close().catch(() => {}))
  await pg.exec(`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);`)
  const options = {
    shape: { url: env.shapeUrl, params: { table: 'items' } },
    table: 'items',
    primaryKey: ['id'],
    shapeKey: 'items_resume',
  }
  const count = async () => Number((await pg.query('SELECT count(*)::int AS n FROM items')).rows[0].n)

  let next = 1
  for (let round = 0; round < 6; round++) {
    const sub = await pg.electric.syncShapeToTable(options)
    // Writes land while it is subscribed, then while it is not: it resumes from the LSN it
    // persisted, so anything it was told it had must really have been delivered.
    const during = insertMany(env, 40, next)
    next += 40
    await during
    await waitFor(async () => (await count()) >= next - 1 - 20, { timeout: 20_000, message: 'rows while subscribed' })
    sub.unsubscribe()
    await insertMany(env, 20, next)
    next += 20
  }
  const sub = await pg.electric.syncShapeToTable(options)
  t.after(() => sub.unsubscribe())
  const want = next - 1
  await waitFor(async () => (await count()) === want, {
    timeout: 30_000,
    message: `pglite to hold all ${want} rows`,
    details: () => env.logTail(),
  })
  const ids = (await pg.query('SELECT id FROM items ORDER BY id')).rows.map((r) => r.id)
  assert.deepEqual(ids, Array.from({ length: want }, (_, i) => i + 1))
})
