import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import type { Config } from '../config/index.js';
import { createDbClient, type Sql } from '../db/client.js';
import { createQueries } from '../db/queries.js';
import { watchDependencies, type ProbeResult } from '../lifecycle/dependencies.js';
import { requestBuildinfo, watchRetirement, type RetirementState } from '../lifecycle/retirement.js';
import { GUARD_VERSION } from '../lifecycle/version.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { Upstream } from '../proxy/upstream.js';
import { classifyDbError, createDecider, type Decider, type LocalDecider } from '../reinit/decider.js';
import { createAdminApp, type ProxyingState } from './admin-app.js';
import { listen } from './listen.js';

/**
 * The control plane of a guard: the database client, the decider (cache and shared
 * lookups) and the admin listener. One per guard, whatever the number of proxy workers,
 * so the pool bound and the cache hold for the whole guard.
 */
export interface ControlPlane {
  decider: Decider | null;
  adminAddress: AddressInfo;
  /** coderd's last reported version and whether it retires the guard. */
  retirement: () => RetirementState;
  /** Marks the guard as draining: /readyz answers 503 from now on. */
  drain(): void;
  close(): Promise<void>;
}

export interface ControlOptions {
  metrics: Metrics;
  upstream: Upstream;
  log: Logger;
  /** Prometheus text for /metrics (the cluster primary aggregates its workers). */
  metricsText?: () => Promise<string>;
  /** Told whenever coderd's version or the retirement state changes. */
  onRetirement?: (state: RetirementState) => void;
  /** Whether the proxy listener, or at least one worker, accepts traffic (readiness). */
  proxying: () => ProxyingState;
}

/** A workspace id no workspace has: the probe's statement finds nothing and reads no row. */
const NIL_WORKSPACE = '00000000-0000-0000-0000-000000000000';

const withTimeout = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} timed out after ${ms}ms`)), ms).unref())]);

/** Starts the control plane; in mode off no database client is even created. */
export async function startControlPlane(config: Config, opts: ControlOptions): Promise<ControlPlane> {
  const { metrics } = opts;
  let sql: Sql | null = null;
  let decider: LocalDecider | null = null;
  let warmer: { stop(): void } | null = null;
  const probes: Record<string, () => Promise<ProbeResult>> = { coderd: () => probeUpstream(opts.upstream) };
  if (config.mode !== 'off') {
    sql = createDbClient({
      url: config.pgUrl,
      params: config.pgParams,
      poolSize: config.dbPoolSize,
      statementTimeoutMs: config.dbTimeoutMs,
      connectTimeoutMs: config.dbConnectTimeoutMs,
    });
    const queries = createQueries(sql);
    decider = createDecider({
      queries,
      timeoutMs: config.dbTimeoutMs,
      cacheSize: config.cacheSize,
      finalTtlMs: config.suppressCacheTtlMs,
      transientTtlMs: config.passCacheTtlMs,
      maxConcurrent: config.dbPoolSize,
      batchSize: config.dbBatchSize,
      batchWindowMs: config.dbBatchWindowMs,
      // No descriptor for a connection is waited out as long as a connection may take to open.
      descriptorWaitMs: config.dbConnectTimeoutMs,
      onCache: (result) => metrics.cache.inc({ result }),
      onStatement: ({ statement, workspaces, seconds, failure }) => {
        metrics.dbStatements.inc({ statement, result: failure ?? 'ok' });
        if (statement === 'latest_builds') metrics.dbBatchWorkspaces.observe(workspaces);
        metrics.dbStatementSeconds.observe({ statement }, seconds);
      },
      onQueue: (waiting) => metrics.decisionQueue.set(waiting),
    });
    warmer = keepWarm(decider, config.cacheWarmIntervalMs, opts.log, metrics);
    // The decision statement itself, for a workspace that cannot exist: `SELECT 1` says
    // "database up" to a role that lacks the grants, and the first sign would be a failed-open
    // decision when a spurious event is already on its way.
    // Once on every connection of the pool, at once: the first probe opens the whole pool
    // at start, and every probe keeps it open (idle_timeout never passes) and reopens what
    // max_lifetime closed. A reconnect storm, typically hours after the last one, then finds
    // every connection open with its backend warm, instead of opening three under the storm's
    // load, where connecting took past the decision deadline (bench/results/NOTES.md).
    const onEveryConnection = () => Promise.all(Array.from({ length: config.dbPoolSize }, () => queries.latestBuilds([NIL_WORKSPACE])));
    probes.database = () =>
      withTimeout(onEveryConnection(), config.dbTimeoutMs, 'database probe').then(
        () => ({ ok: true }),
        (err: unknown) => ({ ok: false, detail: classifyDbError(err).detail }),
      );
  }

  const setInfo = (coderdVersion: string | null) => {
    metrics.info.reset();
    metrics.info.set({ version: GUARD_VERSION, mode: config.mode, coderd_version: coderdVersion ?? 'unknown' }, 1);
  };
  setInfo(null);
  const watcher = watchRetirement({
    upstream: opts.upstream,
    retireAt: config.retireAt ?? null,
    pollMs: config.retirePollMs,
    log: opts.log,
    onChange: (state) => {
      setInfo(state.coderdVersion);
      metrics.retired.set(state.retired ? 1 : 0);
      opts.onRetirement?.(state);
    },
  });

  const dependencies = watchDependencies({
    probes,
    effects: {
      coderd: "clients get 502 in coderd's error shape (504 past the connect deadline) until coderd answers; readiness is unchanged",
      database: 'a seeded prebuild_claimed event passes unchanged (fails open, counted as failed_open) until the database answers; readiness is unchanged',
    },
    intervalMs: config.probeIntervalMs,
    log: opts.log,
    onProbe: (name, state) => metrics.dependencyUp.set({ dependency: name }, state.up ? 1 : 0),
  });

  let draining = false;
  const app = createAdminApp({
    metrics: opts.metricsText ?? (() => metrics.registry.metrics()),
    contentType: metrics.registry.contentType,
    proxying: opts.proxying,
    draining: () => draining,
    dependencies: dependencies.state,
    info: () => {
      const { coderdVersion, retired } = watcher.state();
      return {
        mode: config.mode,
        effective_mode: retired ? 'off' : config.mode,
        coderd_version: coderdVersion,
        retire_at: config.retireAt ?? null,
        retired,
        ...(retired ? { note: 'coderd reports a fixed version: this guard no longer intervenes and can be removed' } : {}),
      };
    },
  });
  const admin = http.createServer(getRequestListener(app.fetch, { overrideGlobalObjects: false }));
  const adminAddress = await listen(admin, config.adminListen.host, config.adminListen.port, undefined, false, 'REINIT_GUARD_ADMIN_LISTEN');

  return {
    decider,
    adminAddress,
    retirement: watcher.state,
    drain: () => {
      draining = true;
    },
    async close() {
      warmer?.stop();
      watcher.stop();
      dependencies.stop();
      await new Promise<void>((resolve) => {
        admin.close(() => resolve());
        admin.closeAllConnections();
      });
      await sql?.end({ timeout: 1 });
    },
  };
}

/**
 * coderd is up when /api/v2/buildinfo answers with coderd's buildinfo (a JSON `version`)
 * within 2 s. Any other answer below 500 (a 404, an HTML page) is reachable but not coderd:
 * REINIT_GUARD_UPSTREAM probably names the wrong service, so it is reported down, saying so.
 */
async function probeUpstream(upstream: Upstream): Promise<ProbeResult> {
  const r = await requestBuildinfo(upstream, 2000);
  if (!r.ok) return { ok: false, detail: `unreachable: ${r.code}` };
  if (r.status >= 500) return { ok: false, detail: `buildinfo answered ${r.status}` };
  if (r.version === null) {
    return {
      ok: false,
      detail: `REINIT_GUARD_UPSTREAM ${upstream.url.origin} answered /api/v2/buildinfo with ${r.status} and no coderd version: is it coderd's address?`,
      effect: 'clients get whatever that server answers; the guard keeps proxying to it and readiness is unchanged',
    };
  }
  return { ok: true };
}

/**
 * Fills the verdict cache with every "claim already handled" workspace at start and then
 * every `intervalMs` (0: never), in the background: readiness never waits for it. Such a
 * verdict is final, so a reconnect storm against a warm guard costs no statement; a
 * workspace claimed after a warm-up is looked up as usual. A failed warm-up is logged and
 * tried again after at most 30 s; it changes nothing else (lookups still work).
 */
function keepWarm(decider: LocalDecider, intervalMs: number, log: Logger, metrics: Metrics): { stop(): void } {
  if (intervalMs <= 0) return { stop() {} };
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const run = async () => {
    const started = performance.now();
    let next = intervalMs;
    try {
      const { cached, statements } = await decider.warmUp();
      metrics.cacheWarmed.set(cached);
      log.info('verdict cache warmed', { workspaces: cached, statements, ms: Math.round(performance.now() - started) });
    } catch (err) {
      const { failure, detail } = classifyDbError(err);
      metrics.dbErrors.inc({ kind: failure });
      log.warn('verdict cache warm-up failed', { failure, detail, effect: 'none: each workspace is looked up when its agent connects; retried later' });
      next = Math.min(intervalMs, 30_000);
    }
    if (stopped) return;
    timer = setTimeout(() => void run(), next);
    timer.unref();
  };
  void run();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
