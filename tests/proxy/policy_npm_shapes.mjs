// Follow shapes through the proxy with the real npm client, for test_policy_oracle_fuzz_real.py.
//
//   node policy_npm_shapes.mjs '<json: [{url, params, token}]>'
//
// Prints one JSON line once every shape is up to date (or failed): per shape, {rows} (values
// as text, null as null) or {error}. Then reads one line from stdin, a JSON list with each
// shape's expected rows (keyed by id), waits until each shape's rows equal them (live
// changes arrive through the client's own long-polls) or 15 s pass, and prints the rows again.
import readline from 'node:readline'

setTimeout(() => process.exit(2), 300_000).unref() // a backstop: never outlive a test run

const { ShapeStream, Shape } = await import(
  new URL('../node/node_modules/@electric-sql/client/dist/index.mjs', import.meta.url)
)

const specs = JSON.parse(process.argv[2])
const errors = specs.map(() => null)

function text(rows) {
  const out = {}
  for (const row of rows) {
    const value = {}
    for (const [k, v] of Object.entries(row)) value[k] = v === null ? null : String(v)
    out[value.id] = value
  }
  return out
}

const shapes = specs.map((spec, i) => {
  const stream = new ShapeStream({
    url: spec.url,
    params: spec.params,
    headers: spec.token ? { Authorization: `Bearer ${spec.token}` } : {},
    onError: (error) => {
      errors[i] = String(error?.status ?? error?.message ?? error)
      return undefined // stop
    },
  })
  return new Shape(stream)
})

function canonical(rows) {
  const keys = (o) => Object.keys(o).sort()
  return JSON.stringify(keys(rows).map((k) => [k, keys(rows[k]).map((c) => [c, rows[k][c]])]))
}

function settled(i) {
  return new Promise((resolve) => {
    const started = Date.now()
    const tick = () => {
      if (errors[i] !== null) return resolve({ error: errors[i] })
      if (shapes[i].isUpToDate) return resolve({ rows: text(shapes[i].currentRows) })
      if (Date.now() - started > 15000) return resolve({ error: 'never up to date' })
      setTimeout(tick, 20)
    }
    tick()
  })
}

console.log(JSON.stringify(await Promise.all(specs.map((_, i) => settled(i)))))

const lines = readline.createInterface({ input: process.stdin })
// (the test gone, stdin closed: stop, rather than follow shapes of a dead proxy for ever)
lines.once('close', () => process.exit(1))
const expected = JSON.parse(await new Promise((resolve) => lines.once('line', resolve)))
lines.removeAllListeners('close')
lines.close()

function caughtUp(i) {
  return new Promise((resolve) => {
    const started = Date.now()
    const want = canonical(expected[i])
    const tick = () => {
      if (errors[i] !== null) return resolve({ error: errors[i] })
      const rows = text(shapes[i].currentRows)
      if (canonical(rows) === want || Date.now() - started > 15000) {
        return resolve({ rows })
      }
      setTimeout(tick, 50)
    }
    tick()
  })
}

console.log(JSON.stringify(await Promise.all(specs.map((_, i) => caughtUp(i)))))
process.exit(0)
