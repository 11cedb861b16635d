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
  adminAddress: AddressInfo;
  metrics: Metrics;
  /** Stops accepting, lets in-flight requests finish within `graceMs`, then closes the rest. */
  close(graceMs?: number): Promise<void>;
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
    adminAddress: control.adminAddress,
    metrics,
    async close(graceMs = 10_000) {
      control.drain();
      await proxy.close(graceMs);
      await control.close();
    },
  };
}
