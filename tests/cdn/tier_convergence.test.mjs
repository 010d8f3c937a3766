// Real clients through the shipped layout, under rotations, a crash and a deleted shape.
//
//     npm client -> shape-proxy (open.yaml) -> nginx (config/nginx, real) -> engine -> Postgres
//
// Two writers run while the shape is rotated by a TRUNCATE and by ALTER TABLE ADD COLUMN, the
// engine is SIGKILLed and started again on its data dir, and the shape is DELETEd (straight to
// the engine, as an operator would). nginx keeps what the headers allow: an `offset=-1` answer
// for an hour, catch-ups for a minute, 409s for a minute. After each fault a new client starts
// (its `offset=-1` may come from the cache and name a rotated handle). Every client must end with
// exactly Postgres's rows, and no client may be handed a change its view cannot take (an insert
// of a key it holds, an update or delete of a key it lacks): no change applied twice, none lost.
//
// Run by tests/cdn/test_tier_convergence.py; alone:
//   PYTHON=$PWD/.venv/bin/python node --test tests/cdn/tier_convergence.test.mjs

import test from 'node:test'
import assert from 'node:assert/strict'
import {
  useCluster, startNginx, startProxy, ShapeStream, Shape, psql, psqlRows, sleep, waitFor, show,
} from '../node/harness.mjs'

const cluster = useCluster()
const SEED = process.env.TIER_SEED ? Number(process.env.TIER_SEED) : Math.floor(Math.random() * 2 ** 31)

function prng(seed) {
  let s = seed >>> 0
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return { next, int: (a, b) => a + Math.floor(next() * (b - a + 1)) }
}

function statement(r) {
  const id = r.int(1, 40)
  const v = r.int(0, 99)
  switch (r.int(0, 3)) {
    case 0:
      return `INSERT INTO items (id, v, title) VALUES (${id}, ${v}, 't${v}') ON CONFLICT (id) DO UPDATE SET v = ${v};`
    case 1:
      return `UPDATE items SET v = ${v}, title = 'u${v}' WHERE id = ${id};`
    case 2:
      return `DELETE FROM items WHERE id = ${id};`
    default:
      return `BEGIN; DELETE FROM items WHERE id = ${id}; INSERT INTO items (id, v, title) VALUES (${id}, ${v}, 'r${v}'); COMMIT;`
  }
}

/** A client: ShapeStream + Shape, and its own strict view of the messages. */
function startClient(url, name, { where, liveSse = false } = {}) {
  const view = new Map()
  const violations = []
  const errors = []
  let refetches = 0
  const aborter = new AbortController()
  const requests = []
  const stream = new ShapeStream({
    url,
    params: { table: 'items', ...(where ? { where } : {}) },
    liveSse,
    signal: aborter.signal,
    fetchClient: async (input, init) => {
      const res = await fetch(input, init)
      const q = new URL(String(input)).searchParams
      requests.push(`+${Date.now() % 1000000} ${res.status} ${q.get('handle') ?? '-'} ${q.get('offset')}${q.get('live') ? ' live' : ''}` +
        `${q.get('expired_handle') ? ` expired=${q.get('expired_handle')}` : ''}${q.get('cache-buster') ? ' buster' : ''}` +
        ` -> ${res.headers.get('electric-handle')} ${res.headers.get('electric-offset')}`)
      return res
    },
    onError: (e) => {
      errors.push(String(e?.message ?? e))
    },
  })
  stream.subscribe((messages) => {
    for (const m of messages) {
      if (m.headers?.control === 'must-refetch') {
        view.clear()
        refetches++
        continue
      }
      const op = m.headers?.operation
      if (!op) continue
      const id = String(m.value.id)
      if (op === 'insert') {
        if (view.has(id)) violations.push(`insert of held ${id}`)
        view.set(id, { ...m.value })
      } else if (op === 'update') {
        if (!view.has(id)) violations.push(`update of missing ${id}`)
        else view.set(id, { ...view.get(id), ...m.value })
      } else if (op === 'delete') {
        if (!view.has(id)) violations.push(`delete of missing ${id}`)
        view.delete(id)
      }
    }
  })
  const shape = new Shape(stream)
  return {
    name, where, stream, shape, violations, errors,
    get refetches() { return refetches },
    rows: () => [...shape.currentValue.values()],
    viewRows: () => [...view.values()],
    requests,
    stop: () => aborter.abort(),
  }
}

const canon = (rows) =>
  JSON.stringify(
    rows
      .map((x) => Object.keys(x).sort().map((k) => [k, x[k] === null ? null : String(x[k])]))
      .sort((a, b) => Number(a.find(([k]) => k === 'id')[1]) - Number(b.find(([k]) => k === 'id')[1])),
  )

async function expected(dbUrl, where) {
  const cols = (await psqlRows(dbUrl, `SELECT column_name FROM information_schema.columns
      WHERE table_name = 'items' ORDER BY ordinal_position`)).map((r) => r[0])
  const rows = await psqlRows(dbUrl, `SELECT ${cols.join(', ')} FROM items ${where ? `WHERE ${where}` : ''}`)
  return rows.map((r) => Object.fromEntries(cols.map((c, i) => [c, r[i] === '<<NULL>>' ? null : r[i]])))
}

test('tier: clients through proxy -> nginx -> engine end with exactly the table', { timeout: 120_000 }, async (t) => {
  console.log(`# tier seed ${SEED} (TIER_SEED=${SEED} repeats it)`)
  const env = await cluster.newEnv(t, { engineArgs: ['--allow-delete', '--chunk-bytes', '2048'] })
  const nginx = await startNginx(env.engine.baseUrl)
  t.after(() => nginx.stop())
  const proxy = await startProxy(nginx.baseUrl)
  t.after(() => proxy.stop())
  await env.sql(`CREATE TABLE items (id int PRIMARY KEY, v int, title text);
    INSERT INTO items SELECT g, g, 'seed' || g FROM generate_series(1, 30) g;`)

  const url = proxy.shapeUrl
  const clients = [
    startClient(url, 'long-poll'),
    startClient(url, 'sse', { liveSse: true }),
    startClient(url, 'where', { where: 'v < 50' }),
  ]
  t.after(() => clients.forEach((c) => c.stop()))
  await waitFor(async () => clients.every((c) => c.stream.isUpToDate), { timeout: 20_000, message: 'initial sync' })

  const r = prng(SEED)
  let writing = true
  const stats = { ok: 0, failed: 0 }
  const writer = async (wr) => {
    while (writing) {
      try {
        await psql(env.dbUrl, statement(wr), { timeout: 10_000 })
        stats.ok++
      } catch {
        stats.failed++
      }
      await sleep(wr.int(5, 60))
    }
  }
  const writers = [writer(prng(SEED + 1)), writer(prng(SEED + 2))]
  const log = []
  const faults = ['truncate', 'alter', 'engine-kill', 'delete']
  for (let i = faults.length - 1; i > 0; i--) {
    const j = r.int(0, i)
    ;[faults[i], faults[j]] = [faults[j], faults[i]]
  }
  if (process.env.TIER_FAULTS) faults.splice(0, faults.length, ...process.env.TIER_FAULTS.split(','))
  for (let round = 1; round < Number(process.env.TIER_ROUNDS || 1); round++) faults.push(...faults.slice(0, 4))
  let column = 0
  for (const f of faults) {
    await sleep(r.int(300, 1200))
    const faultStarted = Date.now()
    if (f === 'truncate') {
      await psql(env.dbUrl, `BEGIN; TRUNCATE items; INSERT INTO items (id, v, title) VALUES (1, 1, 'after truncate'); COMMIT;`)
    } else if (f === 'alter') {
      await psql(env.dbUrl, `ALTER TABLE items ADD COLUMN c${++column} int DEFAULT ${column};`)
    } else if (f === 'engine-kill') {
      await env.engine.kill()
      await sleep(r.int(0, 800))
      await env.engine.up()
    } else if (f === 'delete') {
      for (const q of ['table=items', 'table=items&where=v+%3C+50']) {
        const res = await fetch(`${env.engine.shapeUrl}?${q}`, { method: 'DELETE' })
        log.push(`DELETE ${res.status}`)
        await res.arrayBuffer()
      }
    }
    log.push(`${f} (${Date.now() - faultStarted} ms)`)
    // a new client after each fault: its -1 may be the cache's, naming a rotated handle
    const late = startClient(url, `late after ${f}`, {
      ...(r.next() < 0.5 ? {} : { where: 'v < 50' }),
      liveSse: r.next() < 0.5,
    })
    clients.push(late)
  }
  await sleep(1000)
  writing = false
  await Promise.all(writers)
  console.log(`# faults: ${log.join(', ')}; ${stats.ok} writes, ${stats.failed} failed`)

  const t0 = Date.now()
  async function converge(label) {
    for (const c of clients) {
      const started = Date.now()
      let want = []
      await waitFor(
        async () => {
          want = await expected(env.dbUrl, c.where)
          const w = canon(want)
          return canon(c.rows()) === w && canon(c.viewRows()) === w
        },
        {
          timeout: 40_000,
          interval: 200,
          message: `${label}: ${c.name} holds exactly the table's rows (seed ${SEED})`,
          details: () =>
            `shape ${c.rows().length} rows, view ${c.viewRows().length}, table ${want.length}; ` +
            `handle ${c.stream.shapeHandle}; errors ${show(c.errors)}; violations ${show(c.violations)}\n` +
            `faults: ${log.join(', ')}\n${nginx.logTail(4000)}\n${env.engine.logTail()}`,
        },
      )
      if (Date.now() - started > 2000) console.log(`# ${label}: ${c.name} took ${Date.now() - started} ms`)
    }
  }
  await converge('after the faults')
  await env.sql(`INSERT INTO items (id, v, title) VALUES (999, 1, 'last') ON CONFLICT (id) DO UPDATE SET v = 1;`)
  await converge('a write after the faults')
  for (const c of clients) {
    assert.deepEqual(c.violations, [], `${c.name}: changes its view could not take (seed ${SEED})`)
    assert.deepEqual(c.errors, [], `${c.name}: errors (seed ${SEED})`)
  }
  if (process.env.TIER_DUMP) {
    const { writeFileSync } = await import('node:fs')
    writeFileSync(process.env.TIER_DUMP, clients.map((c) => `== ${c.name}\n${c.requests.join('\n')}`).join('\n') +
      `\n${nginx.logTail(200_000)}\n${env.engine.logTail(200_000)}`)
  }
  console.log(`# clients: ${clients.map((c) => `${c.name} ${c.refetches} refetches`).join('; ')}`)
})
