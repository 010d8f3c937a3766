// Test harness for the Node end-to-end suite.
//
// Per test file: one throwaway PostgreSQL cluster (scripts/dev-postgres, temp dir, free port).
// Per test: a fresh database on that cluster and a fresh sync engine subprocess
// (`$PYTHON -m sync_engine ...`, free port, temp data dir, --long-poll-timeout 3) pointed at it.
// Everything is torn down in after-hooks even when a test fails, and again (synchronously)
// on process exit as a last resort. Every wait is bounded by a timeout.
//
// SHAPEGATE_NODE_VIA=proxy runs the same tests through the auth proxy: per test, a
// `$PYTHON -m proxy` subprocess under config/examples/open.yaml (its upstream pointed at the
// test's engine) sits between the client and the engine; `env.shapeUrl` is the proxy's. The
// assertions do not change: the proxy must be invisible to the client.
//
// Usage:
//   import { useCluster, ShapeStream, Shape } from './harness.mjs'
//   const cluster = useCluster()                 // registers before/after hooks for this file
//   test('...', async (t) => {
//     const env = await cluster.newEnv(t)        // database + engine, cleaned up after t
//     await env.sql(`CREATE TABLE ...`)
//     const { shape } = env.shape({ params: { table: 'items' } })
//     assert.deepStrictEqual(await env.rows(shape), [...])
//   })

import { after, before } from 'node:test'
import { spawn, execFile, spawnSync } from 'node:child_process'
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import net from 'node:net'
import { ShapeStream, Shape } from '@electric-sql/client'

export { ShapeStream, Shape }

// The client's module-level UpToDateTracker throttles its (browser-only) localStorage write with a
// plain, ref'd setTimeout of up to 60 s. In Node that timer alone keeps each test file's process
// alive for a minute after its last test. Unref such long timers so the process exits when the
// tests are done; they still fire normally while anything else keeps the loop alive.
{
  const realSetTimeout = globalThis.setTimeout
  globalThis.setTimeout = function patchedSetTimeout(fn, ms, ...args) {
    const handle = realSetTimeout(fn, ms, ...args)
    if (typeof ms === 'number' && ms >= 50_000 && typeof handle?.unref === 'function') handle.unref()
    return handle
  }
}

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
/**
 * 'proxy' when the tests run through the auth proxy (SHAPEGATE_NODE_VIA=proxy), 'cdn' through
 * the shipped nginx cache tier in front of the proxy (SHAPEGATE_NODE_VIA=cdn; run for
 * chaos.test.mjs by tests/cdn/test_chaos_through_nginx.py), else 'direct'.
 */
export const VIA = ['proxy', 'cdn'].includes(process.env.SHAPEGATE_NODE_VIA) ? process.env.SHAPEGATE_NODE_VIA : 'direct'
const OPEN_CONFIG = join(REPO_ROOT, 'config', 'examples', 'open.yaml')
const DEV_POSTGRES = join(REPO_ROOT, 'scripts', 'dev-postgres')
export const PYTHON = process.env.PYTHON || join(REPO_ROOT, '.venv', 'bin', 'python')

// The display settings Electric (and the engine) use for values; psql comparisons use them too.
export const DISPLAY_SETTINGS =
  `SET DateStyle='ISO, DMY'; SET TimeZone='UTC'; SET IntervalStyle='iso_8601'; ` +
  `SET bytea_output='hex'; SET extra_float_digits=1;`

// ---------------------------------------------------------------------------------------------
// small utilities

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// Ports for the servers a test starts are drawn at random from PORT_BAND, outside Linux's
// ephemeral range (32768-60999), and never handed out twice by this process. A port from
// `listen(0)` is free when asked for, not when the server it is given binds it (a Python
// process takes a second or more to start under load): meanwhile any other process's
// `bind(0)` and any outgoing connection's local port may take it, and the server then exits
// with "port ... is already in use" (the free-port race seen under load). Drawn from the band,
// only another server drawing from it can take it, and a start that meets that anyway is
// retried on a new port (`startWithRetry`); a restart on its own port waits for it.
const PORT_BAND = [15000, 21000] // (hand-started servers use 21000-27999: TEAM.md)
const handedOut = new Set()

/** Whether nothing listens on 127.0.0.1:`port` now (a listen and close). */
function portFree(port) {
  return new Promise((resolveP) => {
    const srv = net.createServer()
    srv.unref()
    srv.once('error', () => resolveP(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolveP(true)))
  })
}

export async function freePort() {
  const [low, high] = PORT_BAND
  for (let i = 0; i < 500; i++) {
    const port = low + Math.floor(Math.random() * (high - low))
    if (handedOut.has(port)) continue
    handedOut.add(port)
    if (await portFree(port)) return port
  }
  throw new Error(`no free port left in ${low}-${high}`)
}

/** Whether a server's output says it could not listen because its port was taken. */
export const portTaken = (text) => /already in use|EADDRINUSE/i.test(text)

/**
 * Whether the socket listening on 127.0.0.1:`port` belongs to process `pid` or one of its
 * descendants (Linux /proc; true where /proc cannot tell). A server that has not bound its
 * port yet must not be taken for healthy because another server answers on that port.
 */
export function ownsListener(pid, port) {
  let inodes
  try {
    const hex = port.toString(16).toUpperCase().padStart(4, '0')
    inodes = new Set(
      ['/proc/net/tcp', '/proc/net/tcp6']
        .flatMap((f) => { try { return readFileSync(f, 'utf8').split('\n').slice(1) } catch { return [] } })
        .map((l) => l.trim().split(/\s+/))
        .filter((c) => c.length > 9 && c[1].endsWith(`:${hex}`) && c[3] === '0A')
        .map((c) => `socket:[${c[9]}]`),
    )
  } catch {
    return true
  }
  if (inodes.size === 0) return false
  const pids = [pid]
  for (let i = 0; i < pids.length && i < 64; i++) {
    try {
      for (const fd of readdirSync(`/proc/${pids[i]}/fd`)) {
        try {
          if (inodes.has(readlinkSync(`/proc/${pids[i]}/fd/${fd}`))) return true
        } catch {}
      }
      for (const task of readdirSync(`/proc/${pids[i]}/task`)) {
        const kids = readFileSync(`/proc/${pids[i]}/task/${task}/children`, 'utf8').trim()
        if (kids) pids.push(...kids.split(/\s+/).map(Number))
      }
    } catch {
      // (no /proc here: cannot tell; with /proc, a process whose entry is gone has exited, and
      // the listener is another server's: the proxy that lost its port to a squatter and
      // exited must not be taken for healthy because the squatter answers 200)
      if (i === 0) return !existsSync('/proc/self/fd')
    }
  }
  return false
}

/**
 * Wait until `healthUrl` answers 200 from the process `p` ({ child, exited, out }) itself,
 * not from another server on its port (`ownsListener`). Fails at once if it exits: with a
 * `portTaken` error if its output says its port was taken (`startWithRetry` tries another).
 * The 60 s allow for a start on a loaded machine: a CI run at load 12-17 once saw an engine
 * print nothing for 30 s (imports, then its first connection to Postgres); a server that
 * exits fails at once, so only a start that hangs waits this long.
 */
async function untilHealthy(p, healthUrl, port, what, logTail, timeout = 60_000) {
  const deadline = Date.now() + timeout
  let last = ''
  for (;;) {
    if (p.exited) {
      if (portTaken(p.out)) throw portTakenError(what, port, logTail())
      throw new Error(`${what} exited early: ${JSON.stringify(p.exited)}\n${logTail()}`)
    }
    try {
      const res = await fetch(healthUrl, { signal: AbortSignal.timeout(2_000) })
      await res.arrayBuffer()
      last = `status ${res.status}`
      if (res.status === 200) {
        if (ownsListener(p.child.pid, port) && !p.exited) return
        last = 'another server answers on its port'
      }
    } catch (e) {
      last = String(e)
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} ${healthUrl} 200 (${last})\n${logTail()}`)
    }
    await sleep(100)
  }
}

/** An error meaning "the port was taken before the server bound it" (`startWithRetry`). */
function portTakenError(what, port, tail) {
  const e = new Error(`${what}: port ${port} was taken before it bound it\n${tail}`)
  e.portTaken = true
  return e
}

/**
 * `start(port)` on a free port, again on a new one (up to `attempts` times) when it fails
 * because the port was taken meanwhile (`isTaken(error)`); returns start's result.
 */
export async function startWithRetry(start, isTaken, { attempts = 5 } = {}) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    try {
      return await start(port)
    } catch (e) {
      if (attempt >= attempts || !isTaken(e)) throw e
      debug(`port ${port} was taken before the server bound it; retrying on another`)
    }
  }
}

/** Run a command with a hard timeout; resolves {stdout, stderr}, rejects on failure. */
export function run(cmd, args, { timeout = 30_000, input, env } = {}) {
  return new Promise((resolveP, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, env: env ?? process.env },
      (err, stdout, stderr) => {
        if (err) {
          err.message += `\n--- ${cmd} ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr}`
          reject(err)
        } else resolveP({ stdout, stderr })
      },
    )
    if (input !== undefined) child.stdin.end(input)
  })
}

/** Poll `fn` until it returns a truthy value (which is returned) or time runs out. */
export async function waitFor(fn, { timeout = 15_000, interval = 25, message = 'condition', details } = {}) {
  const deadline = Date.now() + timeout
  let lastErr
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) {
      lastErr = e
    }
    if (Date.now() > deadline) {
      const extra = details ? `\n${typeof details === 'function' ? details() : details}` : ''
      throw new Error(
        `timed out after ${timeout} ms waiting for ${message}` +
          (lastErr ? ` (last error: ${lastErr.stack || lastErr})` : '') +
          extra,
      )
    }
    await sleep(interval)
  }
}

/** Reject if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

/** HARNESS_DEBUG=1 prints harness timings to stderr. */
export function debug(...args) {
  if (process.env.HARNESS_DEBUG) console.error(`[harness +${Date.now() % 100000}ms]`, ...args)
}

/** True if `promise` settles within `ms` (the timer is cleared either way, so it never holds the process). */
export async function settlesWithin(promise, ms) {
  let timer
  const timedOut = new Promise((r) => {
    timer = setTimeout(() => r(false), ms)
  })
  try {
    return await Promise.race([promise.then(() => true, () => true), timedOut])
  } finally {
    clearTimeout(timer)
  }
}

/** JSON.stringify that survives BigInt (for assertion messages). */
export function show(v) {
  return JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x))
}

// ---------------------------------------------------------------------------------------------
// last-resort cleanup (synchronous, runs on exit even if hooks did not)

const liveEngines = new Set()
const liveClusters = new Set()
let exitHookInstalled = false
function installExitHook() {
  if (exitHookInstalled) return
  exitHookInstalled = true
  const cleanup = () => {
    for (const child of liveEngines) {
      try {
        child.kill('SIGKILL')
      } catch {}
    }
    for (const dir of liveClusters) {
      try {
        spawnSync(DEV_POSTGRES, ['stop', dir], { timeout: 20_000, stdio: 'ignore' })
        rmSync(dir, { recursive: true, force: true })
      } catch {}
    }
    if (pgpass.dir) rmSync(pgpass.dir, { recursive: true, force: true })
  }
  process.on('exit', cleanup)
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      cleanup()
      process.exit(130)
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Postgres cluster

// Every local user reaches 127.0.0.1, so a cluster asks for the superuser's password there
// (scram-sha-256, scripts/dev-postgres). This process's clusters' passwords go in a pgpass file
// of its own (0600 in a 0700 temp dir) named by PGPASSFILE, which psql and the engine (libpq)
// inherit: the URLs tests hand around, and the command lines `ps` shows, carry none.
const pgpass = { dir: null, lines: new Map() }
function rememberPassword(port, password) {
  if (!pgpass.dir) {
    pgpass.dir = mkdtempSync(join(tmpdir(), 'shapegate-node-pgpass-'))
    process.env.PGPASSFILE = join(pgpass.dir, 'pgpass')
  }
  pgpass.lines.set(port, `127.0.0.1:${port}:*:postgres:${password}`)
  writeFileSync(process.env.PGPASSFILE, [...pgpass.lines.values()].join('\n') + '\n', { mode: 0o600 })
}

export async function startCluster() {
  installExitHook()
  return startWithRetry(async (port) => {
    const dir = mkdtempSync(join(tmpdir(), 'shapegate-node-pg-'))
    liveClusters.add(dir)
    let stdout
    try {
      ;({ stdout } = await run(DEV_POSTGRES, ['start', dir, String(port)], { timeout: 90_000 }))
    } catch (e) {
      await stopCluster(dir)
      throw e
    }
    const line = stdout.split('\n').find((l) => l.startsWith('DATABASE_URL='))
    if (!line) throw new Error(`dev-postgres printed no DATABASE_URL:\n${stdout}`)
    const u = new URL(line.slice('DATABASE_URL='.length).trim())
    if (u.password) rememberPassword(port, decodeURIComponent(u.password))
    u.password = ''
    return { dir, port, url: u.toString(), stop: () => stopCluster(dir) }
  }, (e) => portTaken(e.message))
}

/**
 * `start()` again while it fails because its (fixed) port is taken, for up to `timeoutMs`:
 * a restart keeps its port (clients hold URLs with it), and another server may hold it a
 * moment (one whose own start is about to fail on it, then move on).
 */
async function onOwnPort(start, isTaken, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await start()
    } catch (e) {
      if (Date.now() > deadline || !isTaken(e)) throw e
      await sleep(250)
    }
  }
}

/** The directory of the Postgres server binaries scripts/dev-postgres uses (same search). */
function pgBinDir() {
  const found = spawnSync('bash', ['-c',
    'for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do ' +
      '[ -x "$d/initdb" ] && { echo "$d"; exit 0; }; done; ' +
      'command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"'], { encoding: 'utf8' })
  const dir = found.stdout.trim()
  if (!dir) throw new Error('no PostgreSQL server binaries found')
  return dir
}

/**
 * Restart a cluster from startCluster on its own directory and port: `fast` is a clean
 * shutdown, `immediate` is as a crash (no checkpoint; replication slots go back to their
 * last checkpointed position). Returns once it accepts connections again.
 */
export async function restartCluster(dir, port, mode = 'fast') {
  const pgCtl = join(pgBinDir(), 'pg_ctl')
  const asPg = process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', pgCtl]] : [pgCtl, []]
  await run(asPg[0], [...asPg[1], '-D', join(dir, 'data'), '-m', mode, '-w', 'stop'], { timeout: 60_000 })
  await onOwnPort(
    () => run(DEV_POSTGRES, ['start', dir, String(port)], { timeout: 90_000 }),
    (e) => portTaken(e.message),
  )
}

async function stopCluster(dir) {
  try {
    await run(DEV_POSTGRES, ['stop', dir], { timeout: 30_000 })
  } catch (e) {
    console.error(`dev-postgres stop failed: ${e.message}`)
  }
  rmSync(dir, { recursive: true, force: true })
  liveClusters.delete(dir)
}

export function withDbName(url, name) {
  const u = new URL(url)
  u.pathname = `/${name}`
  return u.toString()
}

/**
 * Run SQL through psql against `url`. Returns the raw stdout (unaligned, tuples only,
 * fields separated by \x1f, records by \x1e, NULL printed as \x00NULL\x00 marker).
 */
export async function psql(url, sqlText, { timeout = 30_000, settings = '' } = {}) {
  const { stdout } = await run(
    'psql',
    [
      '-X', '-q', '-A', '-t',
      '-v', 'ON_ERROR_STOP=1',
      '-F', FIELD_SEP,
      '-R', RECORD_SEP,
      '-P', `null=${NULL_MARK}`,
      '-d', url,
      '-f', '-',
    ],
    { timeout, input: settings + '\n' + sqlText + '\n' },
  )
  return stdout
}
export const FIELD_SEP = '\x1f'
export const RECORD_SEP = '\x1e'
export const NULL_MARK = '<<NULL>>'

/** psql query -> array of rows, each an array of text values (null for SQL NULL). */
export async function psqlRows(url, query, opts) {
  const out = await psql(url, query, opts)
  // psql terminates the last record with "\n" rather than the record separator
  const body = out.endsWith('\n') ? out.slice(0, -1) : out
  if (body === '') return []
  return body
    .split(RECORD_SEP)
    .map((rec) => rec.split(FIELD_SEP).map((v) => (v === NULL_MARK ? null : v)))
}

// ---------------------------------------------------------------------------------------------
// engine

// A server's whole output, its last ~100-200 kB kept for failure messages.
function rollingLog() {
  let text = ''
  return {
    append(chunk) {
      text += chunk.toString()
      if (text.length > 200_000) text = text.slice(-100_000)
    },
    get text() {
      return text
    },
  }
}

// A spawned server, killed by the exit hook if a test leaves it running: its first 20 kB of
// output (why it failed to start), its exit status once it exits, and a promise of that exit.
function tracked(child, what, append) {
  liveEngines.add(child)
  const p = { child, exited: null, out: '' }
  const collect = (chunk) => {
    append(chunk)
    if (p.out.length < 20_000) p.out += chunk.toString()
  }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  p.exitP = new Promise((r) =>
    child.on('exit', (code, signal) => {
      p.exited = { code, signal }
      liveEngines.delete(child)
      append(`\n[harness] ${what} exited: ${JSON.stringify(p.exited)}\n`)
      r()
    }),
  )
  return p
}

export async function startEngine(databaseUrl, { extraArgs = [] } = {}) {
  installExitHook()
  const dataDir = mkdtempSync(join(tmpdir(), 'shapegate-node-engine-'))
  let port = 0 // (chosen by startWithRetry; kept across restarts)
  const args = () => [
    '-m', 'sync_engine',
    '--database-url', databaseUrl,
    '--port', String(port),
    '--data-dir', dataDir,
    '--long-poll-timeout', '3',
    ...extraArgs,
  ]
  const logs = rollingLog()
  const append = logs.append
  let proc = null // { child, exitP, exited, out }

  function spawnProcess() {
    const child = spawn(PYTHON, args(), { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    proc = tracked(child, 'engine', append)
  }

  async function kill(graceMs) {
    if (!proc || proc.exited) return
    proc.child.kill('SIGTERM')
    if (!(await settlesWithin(proc.exitP, graceMs))) {
      proc.child.kill('SIGKILL')
      await settlesWithin(proc.exitP, 5_000)
    }
  }

  const baseUrl = () => `http://127.0.0.1:${port}`

  /** Spawn it and wait for it to be healthy (`untilHealthy`). */
  async function spawnHealthy() {
    spawnProcess()
    try {
      await untilHealthy(proc, `${baseUrl()}/v1/health`, port, 'engine', () => engine.logTail())
    } catch (e) {
      await kill(500)
      throw e
    }
  }

  const engine = {
    get port() {
      return port
    },
    get baseUrl() {
      return baseUrl()
    },
    get shapeUrl() {
      return `${baseUrl()}/v1/shape`
    },
    dataDir,
    log: () => logs.text,
    logTail: (n = 4000) => `--- engine log (tail) ---\n${logs.text.slice(-n)}`,
    /** Stop the process (SIGTERM, SIGKILL after `graceMs`) and start it again: same port, same data dir. */
    async restart({ graceMs = 10_000 } = {}) {
      await engine.down({ graceMs })
      await engine.up()
    },
    /** The first half of `restart`: the process has exited when this returns. */
    async down({ graceMs = 10_000 } = {}) {
      await kill(graceMs)
    },
    /** SIGKILL, as a crash: nothing flushed, nothing closed. The process has exited when this returns. */
    async kill() {
      if (!proc || proc.exited) return
      proc.child.kill('SIGKILL')
      await settlesWithin(proc.exitP, 10_000)
    },
    /** The second half of `restart`: same port, same data dir; returns once healthy. */
    async up() {
      append('\n[harness] restarting engine\n')
      try {
        await onOwnPort(spawnHealthy, (e) => e.portTaken)
      } catch (e) {
        await engine.stop()
        throw e
      }
    },
    /** Live requests (long-polls, SSE streams) the engine holds: its /metrics gauge. */
    async parked() {
      const res = await fetch(`${baseUrl()}/metrics`, { signal: AbortSignal.timeout(5_000) })
      const text = await res.text()
      const line = text.split('\n').find((l) => l.startsWith('sync_engine_parked_requests '))
      if (res.status !== 200 || !line) throw new Error(`engine /metrics: ${res.status} ${text}`)
      return Number(line.split(' ')[1])
    },
    // Everything the engine wrote is thrown away, so there is no point waiting for a graceful
    // shutdown (which takes ~2 s with a replication stream open): SIGTERM, then SIGKILL soon.
    async stop() {
      await kill(500)
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
  try {
    await startWithRetry(async (p) => {
      port = p
      await spawnHealthy()
    }, (e) => e.portTaken)
  } catch (e) {
    await engine.stop()
    throw e
  }
  return engine
}

// ---------------------------------------------------------------------------------------------
// proxy (SHAPEGATE_NODE_VIA=proxy)

/**
 * Start `$PYTHON -m proxy` under config/examples/open.yaml with its upstream set to `engineUrl`.
 * The config is rewritten by Python's own YAML loader (as JSON, which is YAML) so the test runs
 * exactly the shipped policy with one field changed. `config` (an object) runs a test's own
 * policy instead, `env` adds to its environment (the secrets its config names).
 */
export async function startProxy(engineUrl, { config = null, env = {} } = {}) {
  installExitHook()
  const dir = mkdtempSync(join(tmpdir(), 'shapegate-node-proxy-'))
  const configPath = join(dir, 'proxy.json')
  let stdout
  if (config) {
    // a test's own policy (an object; JSON is YAML), its upstream set to the engine
    stdout = JSON.stringify({ ...config, upstream: { ...(config.upstream ?? {}), url: engineUrl } })
  } else {
    ;({ stdout } = await run(PYTHON, [
      '-c',
      'import json, sys, yaml; d = yaml.safe_load(open(sys.argv[1])); ' +
        'd["upstream"]["url"] = sys.argv[2]; print(json.dumps(d))',
      OPEN_CONFIG,
      engineUrl,
    ]))
  }
  writeFileSync(configPath, stdout)
  let port = 0 // (chosen by startWithRetry; kept across restarts)
  const logs = rollingLog()
  const append = logs.append
  let proc = null // { child, exitP, exited, out }
  function spawnProcess() {
    const child = spawn(
      PYTHON,
      ['-m', 'proxy', '--config', configPath, '--port', String(port), '--log-level', 'WARNING'],
      { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
    )
    proc = tracked(child, 'proxy', append)
  }
  const baseUrl = () => `http://127.0.0.1:${port}`
  async function halt() {
    if (proc && !proc.exited) {
      proc.child.kill('SIGTERM')
      if (!(await settlesWithin(proc.exitP, 3_000))) {
        proc.child.kill('SIGKILL')
        await settlesWithin(proc.exitP, 5_000)
      }
    }
  }
  async function spawnHealthy() {
    spawnProcess()
    try {
      await untilHealthy(proc, `${baseUrl()}/healthz`, port, 'proxy', () => proxy.logTail())
    } catch (e) {
      await halt()
      throw e
    }
  }
  const proxy = {
    get port() {
      return port
    },
    get baseUrl() {
      return baseUrl()
    },
    get shapeUrl() {
      return `${baseUrl()}/v1/shape`
    },
    logTail: (n = 3000) => `--- proxy log (tail) ---\n${logs.text.slice(-n)}`,
    /** SIGKILL, as a crash. The process has exited when this returns. */
    async kill() {
      if (!proc || proc.exited) return
      proc.child.kill('SIGKILL')
      await settlesWithin(proc.exitP, 10_000)
    },
    /** Start it again after `kill`: same port, same config; returns once healthy. */
    async up() {
      append('\n[harness] restarting proxy\n')
      await onOwnPort(spawnHealthy, (e) => e.portTaken)
    },
    async stop() {
      await halt()
      rmSync(dir, { recursive: true, force: true })
    },
  }
  try {
    await startWithRetry(async (p) => {
      port = p
      await spawnHealthy()
    }, (e) => e.portTaken)
  } catch (e) {
    await proxy.stop()
    throw e
  }
  return proxy
}

// ---------------------------------------------------------------------------------------------
// nginx cache tier (SHAPEGATE_NODE_VIA=cdn)

/**
 * The shipped nginx tier (config/nginx/render.py --run: the real config, the real nginx) on a
 * free port in front of `upstreamBaseUrl`, its cache in a temp directory.
 */
export async function startNginx(upstreamBaseUrl) {
  installExitHook()
  return startWithRetry((port) => startNginxOn(upstreamBaseUrl, port), (e) => e.portTaken)
}

async function startNginxOn(upstreamBaseUrl, port) {
  // Not 0700: started as root, nginx's workers run as nobody and need the directory.
  const dir = mkdtempSync(join(tmpdir(), 'shapegate-node-nginx-'))
  chmodSync(dir, 0o755)
  const upstream = new URL(upstreamBaseUrl).host
  // Its output to a file: nginx opens /dev/stdout for its access log, which fails on a pipe.
  const logPath = join(dir, 'nginx.out')
  const out = openSync(logPath, 'w')
  const child = spawn(
    PYTHON,
    [join(REPO_ROOT, 'config', 'nginx', 'render.py'), '--dir', join(dir, 'nginx'),
      '--listen', `127.0.0.1:${port}`, '--engine', upstream, '--run'],
    { cwd: REPO_ROOT, stdio: ['ignore', out, out] },
  )
  closeSync(out)
  liveEngines.add(child)
  const readLog = () => {
    try {
      return readFileSync(logPath, 'utf8')
    } catch {
      return ''
    }
  }
  const proc = {
    child,
    exited: null,
    get out() {
      return readLog()
    },
  }
  const exitP = new Promise((r) =>
    child.on('exit', (code, signal) => {
      proc.exited = { code, signal }
      liveEngines.delete(child)
      r()
    }),
  )
  const baseUrl = `http://127.0.0.1:${port}`
  const nginx = {
    port,
    baseUrl,
    shapeUrl: `${baseUrl}/v1/shape`,
    logTail: (n = 3000) => `--- nginx (tail) ---\n${readLog().slice(-n)}`,
    async stop() {
      if (!proc.exited) {
        child.kill('SIGTERM')
        if (!(await settlesWithin(exitP, 5_000))) {
          child.kill('SIGKILL')
          await settlesWithin(exitP, 5_000)
        }
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
  try {
    await untilHealthy(proc, `${baseUrl}/v1/health`, port, 'nginx', () => nginx.logTail())
  } catch (e) {
    await nginx.stop()
    throw e
  }
  return nginx
}

// ---------------------------------------------------------------------------------------------
// per-file cluster, per-test environment

let dbCounter = 0

/**
 * Registers before/after hooks that start one Postgres cluster for the current test file.
 * Returns an object whose `newEnv(t)` creates a database + engine for one test.
 */
export function useCluster() {
  const state = { cluster: null }
  before(async () => {
    debug('cluster starting')
    state.cluster = await startCluster()
    debug('cluster started', state.cluster.url)
  }, { timeout: 120_000 })
  after(async () => {
    debug('cluster stopping')
    if (state.cluster) await state.cluster.stop()
    debug('cluster stopped')
  }, { timeout: 60_000 })

  return {
    get url() {
      return state.cluster.url
    },
    /** Restart this file's Postgres (`fast` or `immediate`); see restartCluster. */
    restart(mode = 'fast') {
      return restartCluster(state.cluster.dir, state.cluster.port, mode)
    },
    /** A fresh database and an engine on it; both torn down after `t`. */
    async newEnv(t, { engineArgs = [] } = {}) {
      if (!state.cluster) throw new Error('cluster not started (before hook failed?)')
      const dbName = `node_t${process.pid}_${++dbCounter}`
      await psql(state.cluster.url, `CREATE DATABASE ${dbName};`)
      const dbUrl = withDbName(state.cluster.url, dbName)
      const env = new TestEnv(dbUrl)
      t.after(async () => {
        debug('teardown start', dbName)
        await env.close()
        debug('engine stopped', dbName)
        await dropDatabase(state.cluster.url, dbName)
        debug('database dropped', dbName)
      })
      debug('engine starting', dbName)
      env.engine = await startEngine(dbUrl, { extraArgs: engineArgs })
      debug('engine ready', env.engine.baseUrl)
      if (VIA === 'proxy' || VIA === 'cdn') {
        env.proxy = await startProxy(env.engine.baseUrl)
        debug('proxy ready', env.proxy.baseUrl)
      }
      if (VIA === 'cdn') {
        env.nginx = await startNginx(env.proxy.baseUrl)
        debug('nginx ready', env.nginx.baseUrl)
      }
      return env
    },
  }
}

/**
 * Drop a test database and its replication slots. Slot names are cluster-wide and the engine
 * uses a fixed one per source, so the next test's engine cannot start while it exists.
 */
export async function dropDatabase(serverUrl, dbName) {
  await psql(
    serverUrl,
    `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
       WHERE database = '${dbName}' AND active_pid IS NOT NULL;`,
  )
  await waitFor(
    async () => {
      const rows = await psqlRows(
        serverUrl,
        `SELECT slot_name, active FROM pg_replication_slots WHERE database = '${dbName}';`,
      )
      for (const [slot, active] of rows) {
        if (active === 'f') {
          await psql(serverUrl, `SELECT pg_drop_replication_slot('${slot}');`).catch(() => {})
        }
      }
      return rows.length === 0
    },
    { timeout: 10_000, interval: 100, message: `replication slots of ${dbName} to be dropped` },
  )
  await psql(serverUrl, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE);`)
}

export class TestEnv {
  constructor(dbUrl) {
    this.dbUrl = dbUrl
    this.engine = null
    this.proxy = null // set when the tests run through the proxy
    this.nginx = null // set when they run through the nginx tier (in front of the proxy)
    this.aborters = []
    this.requests = [] // every request the client made: {url, status, contentType}
  }

  /** Where clients connect: nginx's or the proxy's /v1/shape when running through them, else the engine's. */
  get shapeUrl() {
    return (this.nginx ?? this.proxy ?? this.engine).shapeUrl
  }

  /** The engine's log tail, and the proxy's when there is one (for failure messages). */
  logTail() {
    return (
      this.engine.logTail() +
      (this.proxy ? `\n${this.proxy.logTail()}` : '') +
      (this.nginx ? `\n${this.nginx.logTail()}` : '')
    )
  }

  /** Run SQL (psql) in the test database. */
  sql(text, opts) {
    return psql(this.dbUrl, text, opts)
  }

  /** Query rows as text, with Electric's display settings applied. */
  query(text, opts) {
    return psqlRows(this.dbUrl, text, { settings: DISPLAY_SETTINGS, ...opts })
  }

  /** A fetch that records what the client asked for (used only for diagnostics/transport checks). */
  get recordingFetch() {
    return async (input, init) => {
      const url = typeof input === 'string' ? input : input.url ?? String(input)
      const entry = { url, status: null, contentType: null }
      this.requests.push(entry)
      const res = await fetch(input, init)
      entry.status = res.status
      entry.contentType = res.headers.get('content-type')
      return res
    }
  }

  /** Create a ShapeStream + Shape against this engine; aborted when the test ends. */
  shape(options = {}) {
    const aborter = new AbortController()
    this.aborters.push(aborter)
    const errors = []
    const stream = new ShapeStream({
      url: this.shapeUrl,
      signal: aborter.signal,
      fetchClient: this.recordingFetch,
      // a 4xx would otherwise stop the stream silently in a test; record it
      onError: (err) => {
        errors.push(err)
      },
      ...options,
    })
    const shape = new Shape(stream)
    return { stream, shape, errors, abort: () => aborter.abort() }
  }

  /** Wait for the shape's first up-to-date and return its rows (bounded). */
  rows(shape, timeout = 15_000) {
    return withTimeout(shape.rows, timeout, `shape.rows (initial sync)\n${this.logTail()}`)
  }

  /** Wait until `pred(shape.currentRows)` holds; returns the rows. */
  async until(shape, pred, { timeout = 15_000, message = 'shape rows to match' } = {}) {
    let last
    await waitFor(
      () => {
        last = shape.currentRows
        return pred(last)
      },
      {
        timeout,
        message,
        details: () =>
          `last rows: ${show(last)}\nshape error: ${shape.error}\nrequests:\n` +
          this.requests.slice(-15).map((r) => `  ${r.status} ${r.url}`).join('\n') +
          `\n${this.logTail()}`,
      },
    )
    return last
  }

  /** Wait until the engine holds at least `count` live requests (long-polls, SSE streams). */
  async untilParked(count = 1, { timeout = 15_000 } = {}) {
    await waitFor(async () => (await this.engine.parked()) >= count, {
      timeout,
      message: `${count} live request(s) held by the engine`,
      details: () => this.logTail(),
    })
  }

  async close() {
    for (const a of this.aborters) a.abort()
    if (this.nginx) await this.nginx.stop()
    if (this.proxy) await this.proxy.stop()
    if (this.engine) await this.engine.stop()
  }
}

/** Sort rows by a key (numbers, bigints or strings) for order-insensitive comparison. */
export function sortBy(rows, key = 'id') {
  return [...rows].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0))
}
