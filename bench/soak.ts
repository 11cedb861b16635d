/**
 * `npm run soak`: a bounded soak on loopback (SOAK_SECONDS, default 180). The guard (built,
 * its own process, mode enforce, one worker) in front of the unpatched stand-in on an
 * embedded PostgreSQL, under mixed traffic: keep-alive GETs, WebSocket echoes, uploads and a
 * reconnect storm of 1,000 agents every 20 s. Samples the guard's RSS and open file
 * descriptors every 10 s and prints them with the start/end difference.
 */
import http from 'node:http';
import { readdirSync } from 'node:fs';
import postgres from 'postgres';
import WebSocket from 'ws';
import { connectReinit } from '../testkit/agent-client.js';
import { createUser, seedLongClaimedBulk } from '../testkit/fixtures.js';
import { startEmbeddedPg } from '../testkit/pg.js';
import { freePort, start, startNode } from './lib/procs.js';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 180);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const pg = await startEmbeddedPg({ withSchemaTemplate: true });
  const url = await pg.createDatabase('soak');
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const agents = await seedLongClaimedBulk(sql, await createUser(sql, 'soak'), 1000);
  const standinPort = await freePort();
  const standin = await startNode('standin', 'bench/standin-process.ts', standinPort, { PG_URL: url });
  const [port, admin] = [await freePort(), await freePort()];
  const guard = await start('guard', process.execPath, ['dist/main.js'], port, {
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${standinPort}`,
    REINIT_GUARD_PG_URL: url,
    REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
    REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
    REINIT_GUARD_LOG_LEVEL: 'warn',
    // Short verdict cache so every storm also queries the database.
    REINIT_GUARD_SUPPRESS_CACHE_TTL: '10s',
  });
  const base = `http://127.0.0.1:${port}`;
  const until = Date.now() + SECONDS * 1000;
  const samples: Array<{ t: number; rssMiB: number; fds: number }> = [];
  const counts = { gets: 0, ws: 0, uploads: 0, storms: 0, stormAgents: 0, errors: 0 };
  const errorKinds: Record<string, number> = {};
  const fail = (kind: string) => {
    counts.errors++;
    errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
  };
  const sample = () =>
    samples.push({ t: Math.round((Date.now() - (until - SECONDS * 1000)) / 1000), rssMiB: Math.round(guard.rss() / 2 ** 20), fds: readdirSync(`/proc/${guard.child.pid}/fd`).length });

  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const getLoop = async () => {
    while (Date.now() < until) {
      await new Promise<void>((resolve) => {
        http.get(`${base}/api/v2/buildinfo`, { agent: keepAlive }, (res) => {
          res.resume();
          res.on('end', () => (counts.gets++, resolve()));
        }).on('error', (e: NodeJS.ErrnoException) => (fail(`get ${e.code}`), resolve()));
      });
    }
  };
  const wsLoop = async () => {
    while (Date.now() < until) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v2/workspaceagents/me/rpc`);
      await new Promise<void>((resolve) => {
        ws.once('error', (e: NodeJS.ErrnoException) => (fail(`ws ${e.code ?? e.message}`), resolve()));
        // The stand-in has no WebSocket route: a relayed 404 is the expected end.
        ws.once('unexpected-response', (_req, res) => (res.resume(), counts.ws++, resolve()));
        ws.once('open', () => (counts.ws++, ws.close(), resolve()));
      });
    }
  };
  const uploadLoop = async () => {
    while (Date.now() < until) {
      await new Promise<void>((resolve) => {
        const req = http.request(`${base}/api/v2/files`, { method: 'POST', headers: { 'Content-Length': String(1 << 20) } }, (res) => {
          res.resume();
          res.on('end', () => (counts.uploads++, resolve()));
        });
        req.on('error', (e: NodeJS.ErrnoException) => (fail(`upload ${e.code}`), resolve()));
        req.end(Buffer.alloc(1 << 20));
      });
    }
  };
  const stormLoop = async () => {
    while (Date.now() < until) {
      const rs = await Promise.all(agents.map((a) => connectReinit(base, a.token, { timeoutMs: 20_000 }).catch(() => ({ status: 0 }))));
      counts.storms++;
      counts.stormAgents += rs.length;
      for (const r of rs) if (r.status !== 409) fail(`storm status ${r.status}`);
      await sleep(20_000);
    }
  };
  const sampler = (async () => {
    while (Date.now() < until) {
      sample();
      await sleep(10_000);
    }
  })();
  await Promise.all([...Array.from({ length: 8 }, getLoop), ...Array.from({ length: 2 }, wsLoop), uploadLoop(), stormLoop(), sampler]);
  await sleep(2000);
  sample();
  await guard.stop();
  await standin.stop();
  await sql.end();
  await pg.stop();

  for (const s of samples) process.stdout.write(`t=${String(s.t).padStart(4)}s  rss=${s.rssMiB} MiB  fds=${s.fds}\n`);
  const first = samples[1] ?? samples[0]!;
  const last = samples.at(-1)!;
  process.stdout.write(`${JSON.stringify({ ...counts, errorKinds })}\nsoak: ${SECONDS}s; rss ${first.rssMiB} -> ${last.rssMiB} MiB, fds ${first.fds} -> ${last.fds} (from the first sample under load to the end)\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
