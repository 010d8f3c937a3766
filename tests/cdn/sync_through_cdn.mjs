// The unmodified npm client (@electric-sql/client, installed in tests/node/node_modules) syncing
// the `items` shape through the nginx cache tier.
//
//   node tests/cdn/sync_through_cdn.mjs <shape url> <engine secret> <id to wait for>
//
// Prints one JSON line {"phase":"initial","rows":[...]} when the shape is first up to date, then
// {"phase":"live","rows":[...]} once a row with the given id has arrived, and exits 0.
// Exits 1 on any stream error or after 40 s.
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const require = createRequire(join(root, 'tests', 'node', 'package.json'))
const { ShapeStream, Shape } = require('@electric-sql/client')

const [url, secret, waitFor] = process.argv.slice(2)
const timer = setTimeout(() => {
  console.error('timed out')
  process.exit(1)
}, 40_000)

const stream = new ShapeStream({
  url,
  params: { table: 'items', secret },
  onError: (err) => {
    console.error(`stream error: ${err?.status ?? ''} ${err?.message ?? err}`)
    process.exit(1)
  },
})
const shape = new Shape(stream)
const sorted = (rows) => [...rows].sort((a, b) => a.id - b.id)

const initial = await shape.rows
console.log(JSON.stringify({ phase: 'initial', rows: sorted(initial) }))

shape.subscribe(({ rows }) => {
  if (rows.some((r) => String(r.id) === waitFor)) {
    console.log(JSON.stringify({ phase: 'live', rows: sorted(rows) }))
    clearTimeout(timer)
    stream.unsubscribeAll()
    process.exit(0)
  }
})
