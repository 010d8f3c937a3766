// The harness's ports under load: a port handed out is taken by another server before the
// server it was meant for binds it (the "port ... is already in use" failures seen under
// load). The harness must never take that other server for its own, and must start its
// server anyway: on another port for a first start, on its own port (once free) for a
// restart. No Postgres needed: a proxy answers /healthz without its engine.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { spawnSync } from 'node:child_process'
import { freePort, ownsListener, startProxy, sleep } from './harness.mjs'

/** A foreign server on `port` answering 200 to everything (as another test's server would). */
function squat(port) {
  return new Promise((resolveP, reject) => {
    const srv = http.createServer((req, res) => res.end('{"squatter": true}'))
    srv.on('error', reject)
    srv.listen(port, '127.0.0.1', () => resolveP(srv))
  })
}

test('free ports are outside the ephemeral range and never handed out twice', async () => {
  const ports = []
  for (let i = 0; i < 50; i++) ports.push(await freePort())
  assert.equal(new Set(ports).size, ports.length)
  // (bind(0) hands out ports from 32768-60999, where every outgoing connection's local port
  // and every other process's bind(0) come from too)
  assert.deepEqual(ports.filter((p) => p >= 32768), [])
})

test('a process that has exited owns no listener, even while another server answers on its port', async () => {
  // (a proxy that lost its port to a squatter exits; the squatter's 200 must not pass for it)
  const port = await freePort()
  const squatter = await squat(port)
  try {
    assert.equal(ownsListener(process.pid, port), true)
    const gone = spawnSync(process.execPath, ['-e', '0']).pid
    assert.equal(ownsListener(gone, port), false)
  } finally {
    await new Promise((r) => squatter.close(r))
  }
})

test('a restarted server whose port another server holds a moment is its own once healthy', async () => {
  const proxy = await startProxy('http://127.0.0.1:9')
  try {
    await proxy.kill()
    const squatter = await squat(proxy.port)
    const up = proxy.up()
    await sleep(1500)
    await new Promise((r) => squatter.close(r))
    squatter.closeAllConnections?.()
    await up
    const res = await fetch(`${proxy.baseUrl}/healthz`)
    const body = await res.json()
    assert.equal(res.status, 200)
    assert.equal(body.status, 'ok', JSON.stringify(body))
  } finally {
    await proxy.stop()
  }
})
