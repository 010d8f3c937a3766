// Two unmodified npm clients (@electric-sql/client, installed in tests/node/node_modules) of the
// `items` shape through the nginx cache tier, driven by tests/cdn/test_sse_through_nginx.py:
//
//   node tests/cdn/sse_behind_cache.mjs <shape url> <engine secret>
//
// 1. Client A syncs to up-to-date (nginx now holds the catch-up at the tip) and leaves. Prints
//    {"phase":"a","handle":...,"offset":...}.
// 2. On the stdin line `go <n>`: client B (liveSse) syncs through the same URLs, so its catch-up
//    is nginx's stored one, and goes live; once it holds n rows prints {"phase":"b", ...}.
// 3. On the stdin line `live <id>`: once row <id> has arrived prints {"phase":"live", ...} and
//    exits 0.
// Each report carries B's requests (offset, live, sse, status, x-cache-status, whether the body
// ended) and how many times the client printed its "Falling back to long polling" warning.
// Exits 1 on a stream error or after 90 s.
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const require = createRequire(join(root, 'tests', 'node', 'package.json'))
const { ShapeStream, Shape } = require('@electric-sql/client')

const [url, secret] = process.argv.slice(2)
const timer = setTimeout(() => {
  console.error('timed out')
  process.exit(1)
}, 90_000)
const fail = (err) => {
  console.error(`stream error: ${err?.status ?? ''} ${err?.message ?? err}`)
  process.exit(1)
}

let fallbacks = 0
const warn = console.warn
console.warn = (...args) => {
  if (/Falling back to long polling/.test(String(args[0]))) fallbacks++
  warn.apply(console, args)
}

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
async function command(name) {
  const { value, done } = await lines.next()
  if (done || !value.startsWith(`${name} `)) fail(`expected "${name} ..." on stdin, got ${value}`)
  return value.slice(name.length + 1)
}

// A: sync, let nginx store the catch-up at the tip, leave.
const a = new ShapeStream({ url, params: { table: 'items', secret }, onError: fail })
const aShape = new Shape(a)
await aShape.rows
console.log(JSON.stringify({ phase: 'a', handle: a.shapeHandle, offset: a.lastOffset }))
a.unsubscribeAll()

const count = Number(await command('go'))

// B: the same shape over SSE, every request recorded.
const requests = []
const fetchClient = async (input, init) => {
  const p = new URL(input.toString()).searchParams
  const rec = { offset: p.get('offset'), live: p.get('live'), sse: p.get('live_sse'), ended: false }
  requests.push(rec)
  const res = await fetch(input, init)
  rec.status = res.status
  rec.cache = res.headers.get('x-cache-status')
  if (!res.body) {
    rec.ended = true
    return res
  }
  const body = res.body.pipeThrough(
    new TransformStream({
      flush() {
        rec.ended = true
      },
    }),
  )
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers })
}
const b = new ShapeStream({ url, params: { table: 'items', secret }, liveSse: true, fetchClient, onError: fail })
const bShape = new Shape(b)
const report = (phase) => console.log(JSON.stringify({ phase, rows: bShape.currentRows.length, requests, fallbacks }))

function until(pred) {
  return new Promise((done) => {
    if (pred(bShape.currentRows)) return done()
    const off = bShape.subscribe(({ rows }) => {
      if (pred(rows)) {
        off()
        done()
      }
    })
  })
}

await until((rows) => rows.length >= count)
report('b')

const id = await command('live')
await until((rows) => rows.some((r) => String(r.id) === id))
report('live')
clearTimeout(timer)
b.unsubscribeAll()
process.exit(0)
