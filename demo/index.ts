/**
 * `npm run demo`: the guard working on its embedded default. Starts an embedded
 * PostgreSQL with coderd's schema, a stand-in of an unpatched coderd 2.34, and the guard
 * in front of it; then connects like an agent to a long-claimed workspace (straight to
 * coderd, then through the guard) and to a just-claimed one. Needs no configuration.
 */
import postgres from 'postgres';
import { loadConfig } from '../src/config/index.js';
import { createLogger } from '../src/observability/log.js';
import { createMetrics } from '../src/observability/metrics.js';
import { startGuard } from '../src/server/index.js';
import { connectReinit, type ReinitResult } from '../testkit/agent-client.js';
import { startCoderdStandin } from '../testkit/coderd-standin.js';
import { createUser, seedScenario } from '../testkit/fixtures.js';
import { startEmbeddedPg } from '../testkit/pg.js';

const t0 = performance.now();
const secs = () => `${((performance.now() - t0) / 1000).toFixed(1)}s`;
const say = (s = '') => process.stdout.write(`${s}\n`);
const indent = (s: string, n = 8) => s.trimEnd().split('\n').map((l) => ' '.repeat(n) + l).join('\n');

function show(label: string, r: ReinitResult): void {
  say(`    ${label}: HTTP ${r.status} ${r.headers['content-type'] ?? ''}`);
  say(indent(r.body.toString('utf8')));
}

async function main(): Promise<void> {
  say('coder-reinit-guard demo');
  const pg = await startEmbeddedPg({ withSchemaTemplate: true });
  const url = await pg.createDatabase('coder');
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  say(`  embedded PostgreSQL on 127.0.0.1:${pg.port}, coderd 2.34 schema loaded (${secs()})`);

  const alice = await createUser(sql, 'alice');
  const longClaimed = await seedScenario(sql, 'long_claimed', alice, 'long-claimed');
  const justClaimed = await seedScenario(sql, 'just_claimed', alice, 'just-claimed');
  const coderd = await startCoderdStandin({ pgUrl: url, pingIntervalMs: 15_000 });
  say(`  unpatched coderd 2.34 stand-in on ${coderd.url}`);

  const cfg = loadConfig({
    REINIT_GUARD_UPSTREAM: coderd.url,
    REINIT_GUARD_PG_URL: url,
    REINIT_GUARD_LISTEN: '127.0.0.1:0',
    REINIT_GUARD_ADMIN_LISTEN: '127.0.0.1:0',
  });
  if (!cfg.ok) throw new Error(cfg.problems.join('\n'));
  const decisions: string[] = [];
  const metrics = createMetrics(false);
  const guard = await startGuard(cfg.config, { log: createLogger('info', (l) => decisions.push(l.trimEnd())), metrics });
  const guardUrl = `http://127.0.0.1:${guard.proxyAddress.port}`;
  say(`  guard (mode enforce) on ${guardUrl} -> ${coderd.url} (${secs()})`);

  say();
  say('Workspace "long-claimed": claimed from a prebuild, then stopped and started again (latest build #4).');
  const direct = await connectReinit(coderd.url, longClaimed.token);
  show('agent -> coderd       ', direct);
  say('        => unpatched coderd seeds prebuild_claimed again: the agent would restart, killing its sessions.');
  const guarded = await connectReinit(guardUrl, longClaimed.token);
  show('agent -> guard -> coderd', guarded);
  say('        => the 409 a patched coderd sends: the agent stops polling /reinit and keeps running.');

  say();
  say('Workspace "just-claimed": the claim build (#2) is the latest build.');
  const genuine = await connectReinit(guardUrl, justClaimed.token);
  show('agent -> guard -> coderd', genuine);
  say('        => a genuine claim still reaches the agent, byte for byte.');

  say();
  say('The guard logged one line per decision:');
  for (const d of decisions.filter((l) => l.includes('"reinit decision"'))) say(indent(d, 4));
  const text = await metrics.registry.getSingleMetricAsString('coder_reinit_guard_reinit_requests_total');
  say('and counted them (/metrics):');
  say(indent(text.split('\n').filter((l) => !l.startsWith('#')).join('\n'), 4));

  const ok = direct.status === 200 && guarded.status === 409 && genuine.status === 200;
  await guard.close(100);
  await coderd.close();
  await sql.end();
  await pg.stop();
  say();
  say(ok ? `Demo finished in ${secs()}: the guard stopped the spurious reinit and let the real one through.` : 'Demo FAILED: unexpected answers above.');
  process.exit(ok ? 0 : 1);
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
