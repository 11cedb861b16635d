/**
 * `npm run bench [-- scenario...]`: the guard against direct coderd-like upstreams, nginx,
 * node http-proxy and Hono's proxy() on loopback, in one run. Prints a table per scenario
 * with ratios to nginx and writes bench/results/latest.json. See bench/README.md.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { startEmbeddedPg } from '../testkit/pg.js';
import { ROOT } from './lib/procs.js';
import { round } from './lib/stats.js';
import { runHttp, type HttpRow } from './scenarios/http.js';
import { runIdle } from './scenarios/idle.js';
import { runRelay } from './scenarios/relay.js';
import { runReinit } from './scenarios/reinit.js';
import { runStorms } from './scenarios/storm.js';

const ALL = ['http', 'relay', 'reinit', 'storm', 'idle'] as const;
const picked = process.argv.slice(2).filter((a) => (ALL as readonly string[]).includes(a));
const scenarios = picked.length ? picked : [...ALL];
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
/**
 * Process counts compared at equal resources (nginx `worker_processes N` against
 * `REINIT_GUARD_WORKERS=N`); the bars apply at N = 1. The single-guard scenarios (relay,
 * reinit, idle) run the guard with N = 1 too, or BENCH_GUARD_WORKERS.
 */
const PROCESSES = (process.env.BENCH_PROCESSES ?? '1,2').split(',').map(Number);
const WORKERS = process.env.BENCH_GUARD_WORKERS ?? '1';

/** First line a command prints about itself (nginx and wrk print to stderr, or exit 1). */
const version = (cmd: string, args: string[]) => {
  try {
    return execFileSync('sh', ['-c', `${cmd} ${args.join(' ')} 2>&1 || true`], { encoding: 'utf8' }).trim().split('\n')[0];
  } catch {
    return 'missing';
  }
};

const table = (title: string, rows: Array<Record<string, unknown>>) => {
  const cols = Object.keys(rows[0] ?? {});
  const w = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i]!)).join('  ');
  process.stdout.write(`\n${title}\n${line(cols)}\n${line(w.map((n) => '-'.repeat(n)))}\n${rows.map((r) => line(cols.map((c) => String(r[c] ?? '')))).join('\n')}\n`);
};
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? round(a / b, 2) : undefined);
const verdict = (ok: boolean) => (ok ? 'met' : 'MISSED');

async function main() {
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      memGiB: round(os.totalmem() / 2 ** 30, 1),
      kernel: os.release(),
      node: process.version,
      nginx: version('nginx', ['-v']),
      wrk: version('wrk', ['-v']),
      openFilesLimit: version('ulimit', ['-n']),
    },
    processes: PROCESSES,
    bars: {},
  };
  const bars = results.bars as Record<string, string>;
  const guardEnv = { REINIT_GUARD_MODE: 'off' };

  if (scenarios.includes('http')) {
    const { smallGet, transfer } = await runHttp({ seconds: SECONDS, transfers: 8, guardEnv, processes: PROCESSES });
    const by = (rows: HttpRow[], n: string, p = 1) => rows.find((r) => r.contender === n && r.processes === p);
    for (const p of PROCESSES) {
      const ng = by(smallGet, 'nginx', p);
      const rows = smallGet.filter((r) => r.processes === p);
      table(`small GET (~300-byte JSON, 50 keep-alive connections), N = ${p} (nginx worker_processes ${p}, REINIT_GUARD_WORKERS=${p})`, rows.map((r) => ({ ...r, 'rps/nginx': ratio(r.rps, ng?.rps), 'p99/nginx': ratio(r.p99Ms, ng?.p99Ms) })));
      const nt = by(transfer, 'nginx', p);
      table(`64 MiB download and upload (MB/s, sequential), N = ${p}`, transfer.filter((r) => r.processes === p).map((r) => ({ ...r, 'down/nginx': ratio(r.downloadMBs, nt?.downloadMBs), 'up/nginx': ratio(r.uploadMBs, nt?.uploadMBs) })));
    }
    // The bars: at N = 1, equal resources.
    const ng = by(smallGet, 'nginx');
    const g = by(smallGet, 'guard');
    bars['N=1 small GET req/s >= 0.5x nginx'] = verdict((ratio(g?.rps, ng?.rps) ?? 0) >= 0.5);
    bars['N=1 small GET p99 <= 2x nginx'] = verdict((ratio(g?.p99Ms, ng?.p99Ms) ?? 99) <= 2);
    // Issue 20: the ceiling is Node's own, the minimal undici proxy, in the same run.
    bars['N=1 small GET >= 0.95x the minimal undici proxy'] = verdict((ratio(g?.rps, by(smallGet, 'undici-proxy')?.rps) ?? 0) >= 0.95);
    bars['N=1 small GET ahead of http-proxy'] = verdict((g?.rps ?? 0) > (by(smallGet, 'http-proxy')?.rps ?? Infinity));
    bars['N=1 small GET >= 3x Hono proxy()'] = verdict((ratio(g?.rps, by(smallGet, 'hono-proxy')?.rps) ?? 0) >= 3);
    const nt = by(transfer, 'nginx');
    const gt = by(transfer, 'guard');
    bars['N=1 download MB/s >= 0.9x nginx'] = verdict((ratio(gt?.downloadMBs, nt?.downloadMBs) ?? 0) >= 0.9);
    bars['N=1 upload MB/s >= 0.9x nginx'] = verdict((ratio(gt?.uploadMBs, nt?.uploadMBs) ?? 0) >= 0.9);
    results.smallGet = smallGet;
    results.transfer = transfer;
  }

  if (scenarios.includes('relay')) {
    const rows = await runRelay({ messages: 1000, guardEnv });
    const d = rows.find((r) => r.contender === 'direct')!;
    const withAdded = rows.map((r) => ({ ...r, 'sse added median ms': round(r.sseMedianMs - d.sseMedianMs, 3), 'ws rtt added median ms': round(r.wsRttMedianMs - d.wsRttMedianMs, 3) }));
    table('SSE and WebSocket relay latency', withAdded);
    const g = withAdded.find((r) => r.contender === 'guard')!;
    bars['SSE added median latency <= 1 ms'] = verdict(g['sse added median ms'] <= 1);
    bars['WebSocket added median latency <= 1 ms (round trip)'] = verdict(g['ws rtt added median ms'] <= 1);
    results.relay = withAdded;
  }

  if (scenarios.includes('reinit')) {
    const pg = await startEmbeddedPg({ withSchemaTemplate: true });
    try {
      const { cached } = await runReinit(pg, { samples: 2000, workers: process.env.BENCH_GUARD_WORKERS });
      table('/reinit with a cached verdict (409) vs. the same stream passed through', [cached as unknown as Record<string, unknown>]);
      bars['/reinit cached: added p99 <= 1 ms'] = verdict(cached.addedP99Ms <= 1);
      results.reinitCached = cached;
    } finally {
      await pg.stop();
    }
  }

  if (scenarios.includes('storm')) {
    const pg = await startEmbeddedPg({ withSchemaTemplate: true });
    try {
      const agents = Number(process.env.BENCH_STORM_AGENTS ?? 10_000);
      const { rows, poolSize } = await runStorms(pg, { agents, workers: process.env.BENCH_GUARD_WORKERS });
      table(`reconnect storms: ${agents} agents (default configuration, REINIT_GUARD_WORKERS ${process.env.BENCH_GUARD_WORKERS ?? 'unset'})`, rows.map((r) => ({ ...r, statuses: JSON.stringify(r.statuses) })));
      const row = (prefix: string) => rows.find((r) => r.storm.startsWith(prefix))!;
      const direct = row('direct');
      const cold = row('cold');
      const again = row('again');
      const warm = row('warm');
      const mixed = row('mixed');
      const limit = Math.max(10, 1.2 * direct.seconds);
      bars[`storm cold: all 409, 0 failed open, 0 errors, within max(10 s, 1.2x direct = ${round(1.2 * direct.seconds, 1)} s)`] = verdict(
        cold.statuses['409'] === agents && cold.failedOpen === 0 && cold.errors === 0 && cold.seconds <= limit,
      );
      bars['storm again at once: 0 statements, <= 5 s'] = verdict(again.statements === 0 && again.statuses['409'] === agents && again.seconds <= 5);
      bars['storm warm (default): 0 statements, all 409'] = verdict(warm.statements === 0 && warm.statuses['409'] === agents);
      bars['storm mixed: every agent gets what the patched coderd gives it'] = verdict(mixed.wrong === 0 && mixed.failedOpen === 0);
      bars[`storm cold: statements <= workspaces / 100 (${cold.statements})`] = verdict(cold.statements <= agents / 100);
      bars['storm: DB connections <= pool size'] = verdict(rows.every((r) => r.maxDbConnections === undefined || r.maxDbConnections <= poolSize));
      // The guard's rows only: the floor rows are the platform's cost, for comparison.
      const guardRows = rows.filter((r) => !r.storm.startsWith('floor') && !r.storm.startsWith('direct'));
      bars['storm: guard RSS <= 300 MiB'] = verdict(guardRows.every((r) => r.maxRssMiB === undefined || r.maxRssMiB <= 300));
      bars['storm: upstream connections never above client connections'] = verdict(rows.every((r) => r.maxUpstreamOverClients === undefined || r.maxUpstreamOverClients <= 0));
      results.storms = { agents, poolSize, rows };
    } finally {
      await pg.stop();
    }
  }

  if (scenarios.includes('idle')) {
    const idle = await runIdle({ connections: Number(process.env.BENCH_IDLE_CONNECTIONS ?? 10_000), workers: WORKERS, guardEnv });
    table('idle long-lived connections through the guard', [idle as unknown as Record<string, unknown>]);
    bars['10,000 idle connections: RSS <= 300 MiB, no errors'] = verdict(idle.opened === idle.connections && idle.errors === 0 && idle.guardRssMiB <= 300);
    results.idle = idle;
  }

  table('bars', Object.entries(bars).map(([bar, v]) => ({ bar, result: v })));
  mkdirSync(`${ROOT}/bench/results`, { recursive: true });
  writeFileSync(`${ROOT}/bench/results/latest.json`, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`\nwrote bench/results/latest.json\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
