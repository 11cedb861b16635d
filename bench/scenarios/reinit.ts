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

/**
 * `/reinit` answered from a cached verdict (409) against the same stream passed through (mode
 * off), on the unpatched stand-in. The reconnect storms are in ./storm.ts.
 */
export async function runReinit(pg: EmbeddedPg, opts: { samples: number; workers?: string }): Promise<{ cached: ReinitCachedResult }> {
  const url = await pg.createDatabase(`bench_${Date.now()}`);
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const user = await createUser(sql, 'bench');
  const probe = (await seedLongClaimedBulk(sql, user, 1))[0]!;
  const standinPort = await freePort();
  const standin = await startNode('standin', 'bench/standin-process.ts', standinPort, { PG_URL: url });
  const upstream = `http://127.0.0.1:${standinPort}`;
  const env = { REINIT_GUARD_PG_URL: url, ...(opts.workers ? { REINIT_GUARD_WORKERS: opts.workers } : {}) };
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

    return { cached };
  } finally {
    await standin.stop();
    await sql.end();
  }
}
