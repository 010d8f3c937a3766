// The harness's clusters (scripts/dev-postgres) ask for the superuser's password on 127.0.0.1,
// which every local user reaches: with `trust` any local account was superuser there (attack
// round 7). The password reaches psql and the engine through PGPASSFILE (a pgpass file of this
// test process, 0600), never in a URL or on a command line.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { useCluster } from './harness.mjs'

const cluster = useCluster()

function login(pgpassfile) {
  return spawnSync('psql', ['-X', '-w', '-At', '-d', cluster.url, '-c', 'SELECT current_user'], {
    env: { PATH: process.env.PATH, PGCONNECT_TIMEOUT: '10', PGPASSFILE: pgpassfile },
    encoding: 'utf8',
    timeout: 60_000,
  })
}

test('a TCP login to the cluster without its password is refused; the harness has it in PGPASSFILE', () => {
  assert.equal(new URL(cluster.url).password, '', 'the URL carries no password')
  const refused = login('/nonexistent')
  assert.notEqual(refused.status, 0, 'a TCP login without a password got in')
  assert.match(refused.stderr, /no password supplied/)
  assert.equal(statSync(process.env.PGPASSFILE).mode & 0o777, 0o600)
  const ok = login(process.env.PGPASSFILE)
  assert.equal(ok.status, 0, ok.stderr)
  assert.equal(ok.stdout.trim(), 'postgres')
})
