import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { freshDatabase, waitFor } from '../support/env.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

/**
 * The guard's metrics meet Prometheus (Debian's `prometheus` package; `.ci/run` installs
 * it): `promtool check metrics` accepts /metrics of one process and of several workers, and
 * a real Prometheus scrapes a guard under agent traffic and evaluates every query of the
 * shipped Grafana dashboard and alert rules without error.
 */
const root = fileURLToPath(new URL('../..', import.meta.url));
const chart = path.join(root, 'helm/coder-reinit-guard');
const NAMESPACE = 'coder';

/** Every PromQL expression the chart ships: dashboard panels and alert rules. */
function shippedQueries(): Array<{ from: string; expr: string }> {
  const dashboard = JSON.parse(readFileSync(path.join(chart, 'dashboards/coder-reinit-guard.json'), 'utf8')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
  const out = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ from: `dashboard: ${p.title}`, expr: t.expr.replaceAll('$namespace', NAMESPACE) })));
  const rulesDir = path.join(chart, 'rules');
  for (const file of existsSync(rulesDir) ? readdirSync(rulesDir).filter((f) => /\.ya?ml$/.test(f)) : []) {
    for (const doc of parseAllDocuments(readFileSync(path.join(rulesDir, file), 'utf8'))) {
      const groups = ((doc.toJS() as { groups?: Array<{ rules: Array<{ alert?: string; record?: string; expr: string }> }> })?.groups ?? []);
      for (const g of groups) for (const r of g.rules) out.push({ from: `rule ${r.alert ?? r.record}`, expr: String(r.expr) });
    }
  }
  return out;
}

const promtoolCheck = (text: string) => {
  try {
    execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
    return '';
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    return `${e.stdout ?? ''}${e.stderr ?? ''}` || e.message;
  }
};

let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let seeded: Seeded[];
const guards: GuardProcess[] = [];

beforeAll(async () => {
  expect(existsSync('/usr/bin/promtool') || existsSync('/usr/local/bin/promtool'), 'promtool (apt-get install prometheus)').toBe(true);
  db = await freshDatabase('prometheus');
  const user = await createUser(db.sql, 'pat');
  seeded = [await seedScenario(db.sql, 'long_claimed', user), await seedScenario(db.sql, 'just_claimed', user)];
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
}, 60_000);

afterAll(async () => {
  for (const g of guards) await g.stop();
  await standin?.close();
  await db?.sql.end();
});

/** A guard process with agent traffic behind it: a 409, a passed claim, a plain request. */
async function busyGuard(env: Record<string, string>): Promise<GuardProcess> {
  const g = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_PROBE_INTERVAL: '200ms', ...env });
  guards.push(g);
  for (const s of seeded) await connectReinit(g.url, s.token);
  await fetch(`${g.url}/api/v2/buildinfo`);
  return g;
}

describe('Prometheus', () => {
  it.each([
    ['one process', {}],
    ['two workers (the primary sums them)', { REINIT_GUARD_WORKERS: '2' }],
  ])('promtool check metrics accepts /metrics of %s', async (_name, env) => {
    const g = await busyGuard(env);
    const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
    expect(text).toContain('coder_reinit_guard_reinit_requests_total{outcome="suppressed"');
    expect(text).toContain('coder_reinit_guard_process_cpu_seconds_total');
    expect(promtoolCheck(text)).toBe('');
  });

  it('a real Prometheus scrapes the guard, and every shipped query evaluates', async () => {
    const g = await busyGuard({});
    const dir = mkdtempSync(path.join(os.tmpdir(), 'crg-prometheus-'));
    const port = await freePort();
    const admin = new URL(g.adminUrl);
    writeFileSync(
      path.join(dir, 'prometheus.yml'),
      `global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: coder-reinit-guard
    static_configs:
      - targets: ['${admin.host}']
        labels: { namespace: ${NAMESPACE} }
`,
    );
    const prom: ChildProcess = spawn('prometheus', [`--config.file=${dir}/prometheus.yml`, `--storage.tsdb.path=${dir}/data`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
    try {
      const api = `http://127.0.0.1:${port}/api/v1`;
      const query = async (expr: string) => (await (await fetch(`${api}/query?query=${encodeURIComponent(expr)}`)).json()) as { status: string; error?: string; data?: { result: unknown[] } };
      await waitFor(async () => {
        const up = await query('up{job="coder-reinit-guard"} == 1').catch(() => null);
        return (up?.data?.result.length ?? 0) > 0;
      }, 30_000, 'Prometheus to scrape the guard');
      // More traffic between scrapes, so that rates are not zero.
      for (const s of seeded) await connectReinit(g.url, s.token);
      await waitFor(async () => ((await query('count_over_time(coder_reinit_guard_retired[1m])')).data?.result as Array<{ value: [number, string] }> | undefined)?.[0]?.value[1] === '4', 30_000, 'four scrapes');

      const queries = shippedQueries();
      expect(queries.length).toBeGreaterThan(9);
      const failures: string[] = [];
      for (const q of queries) {
        const r = await query(q.expr);
        if (r.status !== 'success') failures.push(`${q.from}: ${r.error ?? r.status}`);
      }
      expect(failures).toEqual([]);
      // And the dashboard shows the traffic: suppressed events and decisions happened.
      const suppressed = await query(`sum(coder_reinit_guard_reinit_requests_total{namespace="${NAMESPACE}",outcome="suppressed"})`);
      expect(suppressed.data?.result.length).toBe(1);
    } finally {
      prom.kill('SIGTERM');
      await new Promise((r) => prom.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
