/**
 * PGlite for the Node tests: `freshPglite()` gives a new, empty PGlite with pglite-sync, as
 * `PGlite.create({ extensions: { electric: electricSync() } })` does, without paying PGlite's
 * initdb (WASM, several seconds of CPU) in every test that needs one.
 */
import { PGlite } from '@electric-sql/pglite'
import { electricSync } from '@electric-sql/pglite-sync'
import { gunzipSync } from 'node:zlib'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * A new, empty PGlite (what `PGlite.create()` gives), started from a saved copy of a fresh
 * data dir when there is one. PGlite's own start runs initdb in WASM: 3-20 s of CPU that blocks
 * this process's event loop (the clients, the harness's health polls), for each test that
 * starts one. The first run saves its pristine data dir (before any table) under
 * node_modules/.cache, keyed by PGlite's version, written to a file of its own and renamed
 * into place (two runs at once can only replace it whole); the next ones load it (~2 s). An
 * unreadable copy is ignored and made again. The database the test then uses is the same:
 * an empty cluster of the same PGlite.
 */
export async function freshPglite() {
  const here = dirname(fileURLToPath(import.meta.url))
  const version = JSON.parse(readFileSync(join(here, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')).version
  const dir = join(here, 'node_modules', '.cache', 'shapegate-pglite')
  const saved = join(dir, `pglite-${version}-fresh.tgz`)
  const options = { extensions: { electric: electricSync() } }
  let data = null
  try {
    data = readFileSync(saved)
    gunzipSync(data) // whole and readable (PGlite would throw an uncaught zlib error on a bad one)
  } catch {
    data = null
  }
  if (data) {
    try {
      return await PGlite.create({ ...options, loadDataDir: new Blob([data]) })
    } catch (e) {
      console.log(`# saved PGlite data dir ${saved} not usable (${e?.message ?? e}): a fresh start`)
    }
  }
  const pg = await PGlite.create(options)
  try {
    const dump = Buffer.from(await (await pg.dumpDataDir('gzip')).arrayBuffer())
    mkdirSync(dir, { recursive: true })
    const part = `${saved}.${process.pid}.part`
    writeFileSync(part, dump)
    renameSync(part, saved)
  } catch (e) {
    console.log(`# could not save PGlite's fresh data dir (${e?.message ?? e}): the next run starts it again`)
  }
  return pg
}
