import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { inject } from 'vitest';
import { loadConfig, type Config } from '../../src/config/index.js';
import { createLogger, type Logger } from '../../src/observability/log.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { startGuard, type Guard } from '../../src/server/index.js';
import { createDatabaseFrom } from '../../testkit/pg.js';

/** A fresh database with coderd's schema, private to the calling test file. */
export async function freshDatabase(prefix: string): Promise<{ url: string; sql: postgres.Sql }> {
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  const url = await createDatabaseFrom(inject('pgSuperuserUrl'), name);
  return { url, sql: postgres(url, { max: 4, onnotice: () => {} }) };
}

/** Log lines captured from a guard, parsed. */
export class LogCapture {
  readonly lines: string[] = [];
  readonly logger: Logger;
  constructor(level: 'debug' | 'info' = 'debug') {
    this.logger = createLogger(level, (l) => this.lines.push(l));
  }
  entries(): Array<Record<string, unknown>> {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  text(): string {
    return this.lines.join('');
  }
}

/** Config for a guard on loopback with ephemeral ports; `env` overrides. */
export function guardConfig(env: Record<string, string>): Config {
  const r = loadConfig({ REINIT_GUARD_LISTEN: '127.0.0.1:0', REINIT_GUARD_ADMIN_LISTEN: '127.0.0.1:0', ...env });
  if (!r.ok) throw new Error(r.problems.join('\n'));
  return r.config;
}

/** A started guard with its captured logs and base URLs. */
export interface TestGuard {
  guard: Guard;
  logs: LogCapture;
  url: string;
  adminUrl: string;
  /** Reads one sample of a metric from the guard's registry (0 when absent). */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
}

/** Starts the real guard in-process on loopback. */
export async function startTestGuard(env: Record<string, string>): Promise<TestGuard> {
  const logs = new LogCapture();
  const guard = await startGuard(guardConfig(env), { log: logs.logger, metrics: createMetrics(false) });
  return {
    guard,
    logs,
    url: `http://127.0.0.1:${guard.proxyAddress.port}`,
    adminUrl: `http://127.0.0.1:${guard.adminAddress.port}`,
    async metric(name, labels = {}) {
      const json = await guard.metrics.registry.getMetricsAsJSON();
      const m = json.find((x) => x.name === name);
      if (!m) return 0;
      const values = (m as unknown as { values: Array<{ value: number; labels: Record<string, string | number> }> }).values;
      return values
        .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
        .reduce((sum, v) => sum + v.value, 0);
    },
  };
}

/** Polls until `check` returns true (no fixed sleeps), or fails after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
