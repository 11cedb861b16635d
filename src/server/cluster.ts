import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { Config } from '../config/index.js';
import type { Logger } from '../observability/log.js';
import { createMetrics } from '../observability/metrics.js';
import type { Decider, Decision } from '../reinit/decider.js';
import { startControlPlane } from './control.js';
import { upstreamFrom } from '../proxy/upstream.js';
import { startProxyServer } from './proxy-server.js';
import { shutdownDelay } from './index.js';

/**
 * Several proxy workers behind one control plane. Workers carry the traffic (the proxy
 * port is shared through node:cluster); the primary owns the database pool, the verdict
 * cache and the admin port. Workers ask the primary for verdicts over IPC, so the pool
 * bound, the one-query-per-workspace sharing and the cache hold for the whole guard.
 */
type Msg =
  | { t: 'decide'; id: number; workspaceId: string; fresh?: boolean }
  | { t: 'decision'; id: number; decision: Decision }
  | { t: 'metrics?'; id: number }
  | { t: 'metrics'; id: number; json: MetricObjectWithValues<MetricValue<string>>[] }
  | { t: 'shutdown'; graceMs: number }
  | { t: 'retired'; retired: boolean }
  | { t: 'retired?' };

/** Runs the cluster primary: control plane plus `config.workers` forked workers. */
export async function runPrimary(config: Config, log: Logger, graceMs: number): Promise<{ stop(delayMs?: number): Promise<void> }> {
  const metrics = createMetrics();
  const upstream = upstreamFrom(config);
  const workers = new Set<Worker>();
  const listening = new Set<Worker>();
  let stopping = false;
  let seq = 0;
  /** Workers that exited soon after their start, in a row. */
  let quickExits = 0;
  const pendingMetrics = new Map<number, { left: number; parts: MetricObjectWithValues<MetricValue<string>>[][]; done: () => void }>();

  const metricsText = async () => {
    const id = ++seq;
    const parts = [await metrics.registry.getMetricsAsJSON()];
    await new Promise<void>((resolve) => {
      const live = [...workers].filter((w) => w.isConnected());
      const entry = { left: live.length, parts, done: resolve };
      pendingMetrics.set(id, entry);
      for (const w of live) w.send({ t: 'metrics?', id } satisfies Msg);
      if (!live.length) resolve();
      setTimeout(resolve, 1000).unref(); // A stuck worker must not stall scraping.
    });
    pendingMetrics.delete(id);
    return AggregatorRegistry.aggregate(parts as never).metrics();
  };

  const control = await startControlPlane(config, {
    metrics,
    upstream,
    log,
    metricsText,
    onRetirement: ({ retired }) => {
      for (const w of workers) if (w.isConnected()) w.send({ t: 'retired', retired } satisfies Msg);
    },
    // Ready while at least one worker accepts traffic: a worker being replaced leaves the
    // others serving, so the pod stays in the Service.
    proxying: () => ({ ok: listening.size > 0, detail: { workers: config.workers, listening: listening.size } }),
  });

  const fork = () => {
    const w = cluster.fork();
    workers.add(w);
    const ready = new Promise<void>((resolve, reject) => {
      w.once('listening', () => {
        listening.add(w);
        resolve();
      });
      w.once('exit', (code) => reject(new Error(`proxy worker exited with ${code} before listening`)));
    });
    w.on('message', (m: Msg) => {
      // A worker asks once its own listener is registered, so the answer cannot be lost
      // (a message pushed before that, on 'online', was).
      if (m.t === 'retired?') w.send({ t: 'retired', retired: control.retirement().retired } satisfies Msg);
      else if (m.t === 'decide' && control.decider) {
        void control.decider.decide(m.workspaceId, { fresh: m.fresh === true }).then((decision) => w.isConnected() && w.send({ t: 'decision', id: m.id, decision } satisfies Msg));
      } else if (m.t === 'metrics') {
        const entry = pendingMetrics.get(m.id);
        if (entry) {
          entry.parts.push(m.json);
          if (--entry.left === 0) entry.done();
        }
      }
    });
    const forkedAt = performance.now();
    w.once('exit', (code, signal) => {
      workers.delete(w);
      listening.delete(w);
      if (stopping) return;
      // A worker that dies soon after its start (a port taken, a bad certificate) would die
      // again at once: back off, doubling up to 30 s, instead of a fork loop that floods the log.
      quickExits = performance.now() - forkedAt < 10_000 ? quickExits + 1 : 0;
      const delayMs = quickExits === 0 ? 0 : Math.min(30_000, 250 * 2 ** (quickExits - 1));
      log.error('proxy worker exited; starting another', { code: code ?? null, signal: signal ?? null, in_ms: delayMs });
      setTimeout(() => {
        if (!stopping) void fork().catch(() => {});
      }, delayMs).unref();
    });
    return ready;
  };
  // Ready (and "started" logged) only once every worker accepts traffic.
  await Promise.all(Array.from({ length: config.workers }, fork));

  return {
    async stop(delayMs = 0) {
      control.drain();
      // Workers keep accepting and serving meanwhile; one that dies now is still replaced.
      await shutdownDelay(log, delayMs);
      stopping = true;
      const exits = [...workers].map((w) => new Promise<void>((r) => (w.isDead() ? r() : w.once('exit', () => r()))));
      for (const w of workers) if (w.isConnected()) w.send({ t: 'shutdown', graceMs } satisfies Msg);
      const kill = setTimeout(() => workers.forEach((w) => w.process.kill('SIGKILL')), graceMs + 5000);
      await Promise.all(exits);
      clearTimeout(kill);
      await control.close();
    },
  };
}

/**
 * A decider that asks the primary. The primary always answers (its statements have a
 * deadline, its queue fails with the database), so the timer here only guards against a
 * lost answer: long enough that a decision queued behind a storm is never cut by it.
 */
function ipcDecider(timeoutMs: number): Decider {
  const lostAfterMs = Math.max(30_000, 10 * timeoutMs);
  let seq = 0;
  const pending = new Map<number, (d: Decision) => void>();
  process.on('message', (m: Msg) => {
    if (m.t !== 'decision') return;
    pending.get(m.id)?.(m.decision);
    pending.delete(m.id);
  });
  return {
    decide(workspaceId, opts) {
      return new Promise<Decision>((resolve) => {
        const id = ++seq;
        const timer = setTimeout(() => {
          pending.delete(id);
          resolve({ ok: false, failure: 'error', detail: `no verdict from the primary within ${lostAfterMs}ms` });
        }, lostAfterMs);
        pending.set(id, (d) => {
          clearTimeout(timer);
          resolve(d);
        });
        process.send?.({ t: 'decide', id, workspaceId, ...(opts?.fresh ? { fresh: true } : {}) } satisfies Msg);
      });
    },
  };
}

/** Runs one proxy worker. */
export async function runWorker(config: Config, log: Logger): Promise<void> {
  const metrics = createMetrics();
  const decider = config.mode === 'off' ? null : ipcDecider(config.dbTimeoutMs);
  let retired = false;
  const proxy = await startProxyServer(config, { log, metrics, upstream: upstreamFrom(config), decider, retired: () => retired });
  process.on('message', (m: Msg) => {
    if (m.t === 'retired') retired = m.retired;
    else if (m.t === 'metrics?') {
      void metrics.registry.getMetricsAsJSON().then((json) => process.send?.({ t: 'metrics', id: m.id, json } satisfies Msg));
    } else if (m.t === 'shutdown') {
      void proxy.close(m.graceMs).then(() => process.exit(0));
    }
  });
  // Pull the current retirement state now that the listener above can receive it; later
  // changes are pushed.
  process.send?.({ t: 'retired?' } satisfies Msg);
  // The primary handles signals for the whole guard.
  process.on('SIGTERM', () => {});
  process.on('SIGINT', () => {});
}
