import postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { createUser, seedLongClaimedBulk } from '../../testkit/fixtures.js';
import type { EmbeddedPg } from '../../testkit/pg.js';
import { startContender } from '../lib/contenders.js';
import { freePort, startNode } from '../lib/procs.js';
import { percentile, promSum, round } from '../lib/stats.js';

type Guard = Awaited<ReturnType<typeof startContender>> & { proc: { adminUrl?: string } | null };
const metricsOf = async (g: Guard) => (await fetch(`${(g.proc as { adminUrl: string }).adminUrl}/metrics`)).text();

export interface ReinitCachedResult {
  passThroughP50Ms: number;
  passThroughP99Ms: number;
  cachedP50Ms: number;
  cachedP99Ms: number;
  addedP99Ms: number;
}

export interface StormResult {
  agents: number;
  first: { allConflict: boolean; statuses: Record<string, number>; seconds: number; dbLookups: number; maxGuardDbConnections: number; maxGuardActiveQueries: number };
  second: { allConflict: boolean; seconds: number; dbLookups: number };
  poolSize: number;
}

/** A database with `n` long-claimed workspaces, the unpatched stand-in and a guard per mode. */
export async function runReinit(pg: EmbeddedPg, opts: { samples: number; stormAgents: number; workers: string }): Promise<{ cached: ReinitCachedResult; storm: StormResult }> {
  const url = await pg.createDatabase(`bench_${Date.now()}`);
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const user = await createUser(sql, 'bench');
  const seeded = await seedLongClaimedBulk(sql, user, opts.stormAgents + 1);
  const probe = seeded.pop()!;
  const standinPort = await freePort();
  const standin = await startNode('standin', 'bench/standin-process.ts', standinPort, { PG_URL: url });
  const upstream = `http://127.0.0.1:${standinPort}`;
  const env = { REINIT_GUARD_PG_URL: url, REINIT_GUARD_WORKERS: opts.workers };
  try {
    // /reinit with a cached verdict vs. the same stream passed through (mode off): both
    // guards run at once and requests alternate between them, so drift hits both alike.
    const off = (await startContender('guard', upstream, { ...env, REINIT_GUARD_MODE: 'off' })) as Guard;
    const on = (await startContender('guard', upstream, env)) as Guard;
    const pass: number[] = [];
    const cachedT: number[] = [];
    for (let i = 0; i < 100; i++) {
      await connectReinit(off.url, probe.token, { until: () => true });
      await connectReinit(on.url, probe.token, { until: () => true }); // the first fills the cache
    }
    for (let i = 0; i < opts.samples; i++) {
      pass.push((await connectReinit(off.url, probe.token, { until: (b) => b.includes('\n\n') })).totalMs);
      cachedT.push((await connectReinit(on.url, probe.token, { until: () => true })).totalMs);
    }
    await off.proc?.stop();
    await on.proc?.stop();
    const cached = {
      passThroughP50Ms: round(percentile(pass, 50), 3),
      passThroughP99Ms: round(percentile(pass, 99), 3),
      cachedP50Ms: round(percentile(cachedT, 50), 3),
      cachedP99Ms: round(percentile(cachedT, 99), 3),
      addedP99Ms: round(percentile(cachedT, 99) - percentile(pass, 99), 3),
    };
    process.stderr.write(`  reinit cached: p99 ${cached.cachedP99Ms} ms vs pass-through ${cached.passThroughP99Ms} ms\n`);

    // Reconnect storm: every agent at once, twice.
    const g = (await startContender('guard', upstream, env)) as Guard;
    try {
      let maxConns = 0;
      let maxActive = 0;
      let sampling = true;
      const sampler = (async () => {
        const s = postgres(url, { max: 1, onnotice: () => {} });
        while (sampling) {
          const [r] = await s<{ conns: number; active: number }[]>`
            SELECT count(*)::int AS conns, count(*) FILTER (WHERE state = 'active')::int AS active
            FROM pg_stat_activity WHERE application_name = 'coder-reinit-guard'`;
          maxConns = Math.max(maxConns, r!.conns);
          maxActive = Math.max(maxActive, r!.active);
          await new Promise((res) => setTimeout(res, 2));
        }
        await s.end();
      })();
      const storm = async () => {
        const before = promSum(await metricsOf(g), 'coder_reinit_guard_verdict_cache_total', { result: 'miss' });
        const t = performance.now();
        const results = await Promise.all(seeded.map((s) => connectReinit(g.url, s.token, { timeoutMs: 30_000 }).catch(() => ({ status: 0 }))));
        const seconds = round((performance.now() - t) / 1000, 2);
        const statuses: Record<string, number> = {};
        for (const r of results) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        const lookups = promSum(await metricsOf(g), 'coder_reinit_guard_verdict_cache_total', { result: 'miss' }) - before;
        return { allConflict: statuses['409'] === seeded.length, statuses, seconds, dbLookups: lookups };
      };
      const first = await storm();
      sampling = false;
      await sampler;
      const second = await storm();
      process.stderr.write(`  storm: ${JSON.stringify(first.statuses)} in ${first.seconds}s, ${first.dbLookups} lookups; again: ${second.seconds}s, ${second.dbLookups} lookups\n`);
      return {
        cached,
        storm: {
          agents: seeded.length,
          first: { ...first, maxGuardDbConnections: maxConns, maxGuardActiveQueries: maxActive },
          second: { allConflict: second.allConflict, seconds: second.seconds, dbLookups: second.dbLookups },
          poolSize: 4,
        },
      };
    } finally {
      await g.proc?.stop();
    }
  } finally {
    await standin.stop();
    await sql.end();
  }
}
