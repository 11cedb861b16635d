import { Hono } from 'hono';

/** One readiness check's result. */
export interface CheckResult {
  ok: boolean;
  detail?: string;
}

/** Dependencies of the admin app. */
export interface AdminAppDeps {
  /** Prometheus text of the guard's metrics. */
  metrics: () => Promise<string>;
  contentType: string;
  /** Named readiness checks; all must pass. */
  checks: Record<string, () => Promise<CheckResult>>;
  /** True once shutdown began: not ready, so load balancers drain the pod. */
  draining: () => boolean;
  /** Extra facts shown by /readyz (mode, retirement). */
  info?: () => Record<string, unknown>;
}

/**
 * The admin application: `/healthz` (the process serves), `/readyz` (it can do its job:
 * upstream reachable, database reachable unless mode is off, not draining) and
 * `/metrics` (Prometheus text).
 */
export function createAdminApp(deps: AdminAppDeps) {
  const app = new Hono();
  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.get('/readyz', async (c) => {
    const names = Object.keys(deps.checks);
    const results = await Promise.all(names.map((n) => deps.checks[n]!().catch((e: unknown) => ({ ok: false, detail: String(e) }))));
    const checks = Object.fromEntries(names.map((n, i) => [n, results[i]]));
    const draining = deps.draining();
    const ready = !draining && results.every((r) => r.ok);
    return c.json({ ready, draining, checks, ...deps.info?.() }, ready ? 200 : 503);
  });
  app.get('/metrics', async (c) => {
    c.header('Content-Type', deps.contentType);
    return c.body(await deps.metrics());
  });
  return app;
}
