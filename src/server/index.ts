import type { AddressInfo } from 'node:net';
import type { Config } from '../config/index.js';
import type { Logger } from '../observability/log.js';
import { createMetrics, type Metrics } from '../observability/metrics.js';
import { startControlPlane } from './control.js';
import { upstreamFrom } from '../proxy/upstream.js';
import { startProxyServer } from './proxy-server.js';

/** A running guard in one process. */
export interface Guard {
  /** Where proxied traffic is served. */
  proxyAddress: AddressInfo;
  /** The TLS listener's address, when configured. */
  tlsAddress: AddressInfo | null;
  /** Listening sockets per proxy address (SO_REUSEPORT). */
  listenSockets: number;
  adminAddress: AddressInfo;
  metrics: Metrics;
  /**
   * Reports not ready at once and keeps serving for `delayMs` (while load balancers stop
   * sending new connections), then stops accepting, lets in-flight requests finish within
   * `graceMs`, and closes the rest.
   */
  close(graceMs?: number, delayMs?: number): Promise<void>;
}

/**
 * The first part of a shutdown: not ready already, still accepting and serving, for `delayMs`.
 * Without it, every rollout, scale-down and node drain refused the connections that kube-proxy
 * and load balancers still sent to the pod in the seconds after SIGTERM.
 */
export async function shutdownDelay(log: Logger, delayMs: number): Promise<void> {
  if (delayMs <= 0) return;
  log.info('not ready; still serving while load balancers stop sending new connections', { delay_ms: delayMs });
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, delayMs);
    function done() {
      clearTimeout(timer);
      hurries.delete(done);
      resolve();
    }
    hurries.add(done);
  });
  log.info('draining', {});
}

const hurries = new Set<() => void>();

/** Ends a running shutdown delay now (a second signal: the operator does not want to wait). */
export function hurryShutdown(): void {
  for (const done of [...hurries]) done();
}

/** Extra wiring for tests and the demo. */
export interface StartOptions {
  log: Logger;
  metrics?: Metrics;
}

/** Starts the guard in this process: control plane (database, decisions, admin) and proxy. */
export async function startGuard(config: Config, opts: StartOptions): Promise<Guard> {
  const metrics = opts.metrics ?? createMetrics();
  const upstream = upstreamFrom(config);
  let listening = false;
  const control = await startControlPlane(config, { metrics, upstream, log: opts.log, proxying: () => ({ ok: listening, detail: { listening } }) });
  const proxy = await startProxyServer(config, {
    log: opts.log,
    metrics,
    upstream,
    decider: control.decider,
    retired: () => control.retirement().retired,
  });
  listening = true;
  return {
    proxyAddress: proxy.address,
    tlsAddress: proxy.tlsAddress,
    listenSockets: proxy.listenSockets,
    adminAddress: control.adminAddress,
    metrics,
    async close(graceMs = 10_000, delayMs = 0) {
      control.drain();
      await shutdownDelay(opts.log, delayMs);
      await proxy.close(graceMs);
      await control.close();
    },
  };
}
