import { Hono } from 'hono';
import type { DependencyState } from '../lifecycle/dependencies.js';

/** Whether this pod can proxy, with the facts behind the answer. */
export interface ProxyingState {
  ok: boolean;
  /** Shown in /readyz, e.g. `{ listening: true }` or `{ workers: 2, listening: 1 }`. */
  detail: Record<string, unknown>;
}

/** Dependencies of the admin app. */
export interface AdminAppDeps {
  /** Prometheus text of the guard's metrics. */
  metrics: () => Promise<string>;
  contentType: string;
  /** Whether the proxy listener (or at least one worker) accepts traffic. */
  proxying: () => ProxyingState;
  /** True once shutdown began: not ready, so load balancers drain the pod at once. */
  draining: () => boolean;
  /** What the guard last learned of coderd and its database: shown, never gating. */
  dependencies: () => Record<string, DependencyState>;
  /** Extra facts shown by /readyz (mode, retirement). */
  info?: () => Record<string, unknown>;
}

/**
 * The admin application: `/healthz` (the process serves), `/readyz` (this pod can proxy:
 * it listens, its workers are up, it is not draining) and `/metrics` (Prometheus text).
 * Readiness deliberately ignores coderd and the database: the guard fails open without its
 * database and answers 502 in coderd's shape without coderd, and every replica shares both,
 * so gating on them would pull every replica out of the `coder` Service at once. Their
 * state is in the body, in `coder_reinit_guard_dependency_up` and in the log.
 */
export function createAdminApp(deps: AdminAppDeps) {
  const app = new Hono();
  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.get('/readyz', (c) => {
    const proxy = deps.proxying();
    const draining = deps.draining();
    const ready = proxy.ok && !draining;
    return c.json({ ready, draining, proxy: proxy.detail, dependencies: deps.dependencies(), ...deps.info?.() }, ready ? 200 : 503);
  });
  app.get('/metrics', async (c) => {
    c.header('Content-Type', deps.contentType);
    return c.body(await deps.metrics());
  });
  return app;
}
