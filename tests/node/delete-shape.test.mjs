// DELETE /v1/shape?handle=H, the handle alone (Electric's own client suite clears shapes this
// way): the shape is gone, a client syncing it gets must-refetch and resyncs to the table's
// current rows, and no answer of the dead handle is served again. Run direct and through the
// proxy (config/examples/open.yaml lets anyone delete any shape; its response cache is on).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { useCluster, sortBy, show } from './harness.mjs'

const cluster = useCluster()
const T = { timeout: 60_000 }

test('a shape deleted by its handle alone is rotated, and its client resyncs', T, async (t) => {
  const env = await cluster.newEnv(t, { engineArgs: ['--allow-delete'] })
  await env.sql(`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);
                 INSERT INTO items VALUES (1, 'one');`)
  const { stream, shape } = env.shape({ params: { table: 'items' } })
  assert.deepStrictEqual(await env.rows(shape), [{ id: 1, title: 'one' }])
  const handle = stream.shapeHandle
  assert.ok(handle)

  // A catch-up answer of this handle (the proxy's cache may keep it).
  const catchUp = `${env.shapeUrl}?table=items&handle=${handle}&offset=0_0`
  assert.equal((await fetch(catchUp)).status, 200)

  await env.sql(`DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (2, 'two');`)
  const deleted = await fetch(`${env.shapeUrl}?handle=${encodeURIComponent(handle)}`, {
    method: 'DELETE',
  })
  assert.ok(deleted.ok, `DELETE by handle: ${deleted.status} ${await deleted.text()}`)

  // (The rows alone may already match through the old handle's live answers, which can carry
  // the writes before the DELETE lands: wait for the new handle too.)
  await env.until(
    shape,
    (rows) =>
      stream.shapeHandle !== handle && show(sortBy(rows)) === show([{ id: 2, title: 'two' }]),
    { message: 'the client to resync to the new shape' },
  )
  // The dead handle's answers are gone: asking for one is a 409 naming the new handle.
  const again = await fetch(catchUp)
  await again.arrayBuffer()
  assert.equal(again.status, 409)
})
