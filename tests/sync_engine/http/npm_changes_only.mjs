// The real npm client (@electric-sql/client's Shape) following a `log: 'changes_only'` shape,
// driven from Python: `node npm_changes_only.mjs <shape url> <table> [sse] [now]` (`sse`: live
// over SSE; `now`: the stream starts at `offset: 'now'`, as on-demand apps do). Each line it
// reads on stdin is a `requestSnapshot` argument as JSON (it is called at once, not awaited:
// while the engine is down it retries). It prints one JSON line per change of its materialised
// view, `{"rows": {key: value}}`, one per snapshot done, `{"snapshot": n}`, one per 409 the
// engine answered, `{"status": 409, "url": ...}`, and one per error the client reports,
// `{"error": "..."}`; it runs until killed.

import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(join(here, '..', '..', 'node', 'package.json'))
const { ShapeStream, Shape } = await import(pathToFileURL(require.resolve('@electric-sql/client')))

const [url, table, ...modes] = process.argv.slice(2)
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const stream = new ShapeStream({
  url,
  params: { table },
  log: 'changes_only',
  liveSse: modes.includes('sse'),
  ...(modes.includes('now') ? { offset: 'now' } : {}),
  fetchClient: async (input, init) => {
    const res = await fetch(input, init)
    if (res.status === 409) say({ status: 409, url: String(input) })
    return res
  },
  onError: (error) => {
    say({ error: String(error && error.message ? error.message : error) })
    return {} // go on (as an app that retries would)
  },
})
const shape = new Shape(stream)
const view = () => {
  const rows = {}
  for (const [key, value] of shape.currentValue) rows[key] = value
  return rows
}
shape.subscribe(() => say({ rows: view() }))
let done = 0
createInterface({ input: process.stdin }).on('line', (line) => {
  shape.requestSnapshot(JSON.parse(line)).then(
    () => say({ snapshot: ++done, rows: view() }),
    (error) => say({ error: `requestSnapshot: ${error && error.message ? error.message : error}` }),
  )
})
process.on('SIGTERM', () => process.exit(0))
