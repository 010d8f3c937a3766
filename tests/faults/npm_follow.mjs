// The real npm client (@electric-sql/client's Shape) following one shape, for the fault
// probes in Python: `node npm_follow.mjs <engine url> <table> [<where>|- [sse]]`. It
// prints one JSON line per change of its materialised view, `{"rows": {key: value}}`, and one per error the client
// reports, `{"error": "..."}`; it runs until killed. The Python side compares the last
// `rows` line with `SELECT`.

import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(join(here, '..', 'node', 'package.json'))
const { ShapeStream, Shape } = await import(pathToFileURL(require.resolve('@electric-sql/client')))

// Optional: a where clause (`-` for none) and `sse` to follow live over SSE.
const [url, table, where, mode] = process.argv.slice(2)
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const stream = new ShapeStream({
  url: `${url}/v1/shape`,
  params: where && where !== '-' ? { table, where } : { table },
  liveSse: mode === 'sse',
  onError: (error) => {
    say({ error: String(error && error.message ? error.message : error) })
    return {} // go on (as an app that retries would)
  },
})
const shape = new Shape(stream)
shape.subscribe(({ rows }) => {
  const view = {}
  for (const [key, value] of shape.currentValue) view[key] = value
  say({ rows: view, count: rows.length })
})
process.on('SIGTERM', () => process.exit(0))
