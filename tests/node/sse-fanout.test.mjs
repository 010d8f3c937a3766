// Many SSE clients on one shape (`liveSse: true`), each getting every change exactly once,
// also across server-side stream ends and for a client that joins mid-stream. Through the
// proxy (SHAPEGATE_NODE_VIA=proxy) the clients share one engine stream per shape: the
// engine never holds more than one live request of theirs at a time (its parked-requests
// gauge, sampled while the changes are written), where straight to it it holds one per client.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, waitFor, show, VIA } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 90_000 }

/** A ShapeStream whose subscriber keeps every insert's id, in arrival order. */
function follow(env) {
  const handle = env.shape({ params: { table: 'notes' }, liveSse: true })
  const inserts = []
  handle.stream.subscribe((messages) => {
    for (const m of messages) {
      if (m.headers?.operation === 'insert') inserts.push(Number(m.value.id))
    }
  })
  return { ...handle, inserts }
}

/** Samples the engine's live (parked) requests until `stop()`, which returns the largest. */
function sampleParked(env) {
  let max = 0
  let samples = 0
  let running = true
  const done = (async () => {
    while (running) {
      max = Math.max(max, await env.engine.parked())
      samples += 1
      await new Promise((resolve) => setTimeout(resolve, 50)) // (a sampling interval)
    }
  })()
  return {
    async stop() {
      running = false
      await done
      return { max, samples }
    },
  }
}

async function engineRequests(env) {
  const text = await (await fetch(`${env.proxy.baseUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith('shape_proxy_upstream_requests_total '))
  return Number(line.split(' ')[1])
}

function openSseStreams(env) {
  return env.requests.filter(
    (r) => new URL(r.url).searchParams.get('live_sse') === 'true' && r.status === 200,
  ).length
}

test(`${VIA}: twelve SSE clients of one shape get every change once`, T, async (t) => {
  // SSE streams end after 2 s: the clients reconnect several times during the test
  const env = await cluster.newEnv(t, { engineArgs: ['--sse-timeout', '2'] })
  await env.sql(`CREATE TABLE notes (id int4 PRIMARY KEY, body text);
                 INSERT INTO notes VALUES (1, 'one');`)
  const clients = Array.from({ length: 12 }, () => follow(env))
  for (const c of clients) assert.deepEqual(await env.rows(c.shape), [{ id: 1, body: 'one' }])
  await waitFor(() => openSseStreams(env) >= clients.length, {
    timeout: 15_000,
    message: 'every client has an SSE stream open',
    details: () => show(env.requests.slice(-20)),
  })
  const before = env.proxy ? await engineRequests(env) : 0
  const startedAt = Date.now()
  const parked = sampleParked(env)

  const expected = [1]
  for (let i = 2; i <= 7; i++) {
    // one insert, or a transaction of two
    if (i % 3) await env.sql(`INSERT INTO notes VALUES (${i}, 'n${i}')`)
    else await env.sql(`BEGIN; INSERT INTO notes VALUES (${i}, 'n'); INSERT INTO notes VALUES (${i + 100}, 'm'); COMMIT;`)
    expected.push(i)
    if (!(i % 3)) expected.push(i + 100)
    await new Promise((resolve) => setTimeout(resolve, 600))
  }
  const { max: maxParked, samples } = await parked.stop()
  // a client joining now: snapshot, then the live changes after it, none twice
  const late = follow(env)
  await env.rows(late.shape)
  await env.sql(`INSERT INTO notes VALUES (8, 'late')`)
  expected.push(8)

  for (const c of clients) {
    await waitFor(() => c.inserts.length >= expected.length, {
      timeout: 20_000,
      message: 'every insert reaches every client',
      details: () => `got ${show(c.inserts)}, want ${show(expected)}`,
    })
    assert.deepEqual(c.inserts, expected)
    assert.deepEqual(c.errors, [])
  }
  await env.until(late.shape, (rows) => rows.some((r) => r.id === 8), { message: 'late joiner live' })
  assert.equal(new Set(late.inserts).size, late.inserts.length, `late joiner repeats: ${show(late.inserts)}`)
  assert.deepEqual([...late.inserts].sort((a, b) => a - b), [...expected].sort((a, b) => a - b))

  // What collapsing guarantees, whatever the timing: one engine stream per shape at a time
  // (its SSE clients join it; a catch-up is answered at once, never held), where the engine
  // holds each client's own stream straight to it. (Two: at a hand-over, the engine may not
  // yet have seen an abandoned stream's connection close.) Counting requests against
  // wall-clock stream lifetimes was flaky under load: catch-ups at stream ends add requests.
  assert.ok(samples > 0)
  if (env.proxy) {
    // (through the proxy, or nginx in front of it)
    assert.ok(maxParked <= 2, `not shared: the engine held ${maxParked} live requests at once`)
    // and far fewer engine requests than one stream per client would have made: with 2 s
    // streams, each of the twelve would have been renewed every 2 s. (Not "fewer engine
    // requests than client requests": the proxy keeps its clients' streams open across the
    // engine's stream ends, so in a short window both counts are a handful and equal by chance.)
    const requests = (await engineRequests(env)) - before
    const renewalsEach = Math.floor((Date.now() - startedAt) / 2000)
    assert.ok(renewalsEach >= 1)
    assert.ok(
      requests < clients.length * renewalsEach,
      `${requests} engine requests in ${renewalsEach * 2}+ s for ${clients.length} SSE clients: not shared`,
    )
  } else {
    assert.ok(maxParked > 2, `the engine held at most ${maxParked} live requests: a client per stream?`)
  }
})
