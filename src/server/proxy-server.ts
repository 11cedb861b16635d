import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config/index.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { createTunnelHandler } from '../proxy/tunnel.js';
import { createUpstream, type Upstream } from '../proxy/upstream.js';
import type { Decider } from '../reinit/decider.js';
import { listen } from './listen.js';
import { createProxyListener } from './proxy-app.js';

/** The data plane: the proxy listener, its upgrade/CONNECT tunnel and its upstream pool. */
export interface ProxyServer {
  address: AddressInfo;
  /** Stops accepting, lets in-flight requests finish within `graceMs`, then closes the rest. */
  close(graceMs: number): Promise<void>;
}

/** Creates the upstream pool from configuration. */
export const upstreamFrom = (config: Config): Upstream =>
  createUpstream({
    url: config.upstream,
    forwardedHeaders: config.forwardedHeaders === 'append',
    connectTimeoutMs: config.upstreamConnectTimeoutMs,
    ca: config.upstreamCa,
  });

/** Starts the proxy listener; `decider` is null in mode off. */
export async function startProxyServer(
  config: Config,
  opts: { log: Logger; metrics: Metrics; upstream: Upstream; decider: Decider | null; retired: () => boolean },
): Promise<ProxyServer> {
  const { log, metrics, upstream } = opts;
  const reinit =
    opts.decider && config.mode !== 'off'
      ? { mode: config.mode, decider: opts.decider, peekTimeoutMs: config.peekTimeoutMs, peekMaxBytes: config.peekMaxBytes }
      : undefined;
  const deps = { upstream, log, metrics };
  const server = http.createServer(
    {
      // Streams and uploads may last hours: no whole-request deadline. Slow-loris clients
      // that never finish their headers are still cut by headersTimeout.
      requestTimeout: 0,
      headersTimeout: config.headerTimeoutMs,
      // Node checks those deadlines on this interval (30 s by default): check often enough
      // that the header deadline means what it says.
      connectionsCheckingInterval: Math.min(1000, config.headerTimeoutMs),
      // Outlive the usual 60 s idle timeout of cloud load balancers in front of us.
      keepAliveTimeout: 65_000,
      maxHeaderSize: 64 * 1024,
    },
    createProxyListener({ ...deps, reinit, retired: opts.retired }),
  );
  const tunnel = createTunnelHandler(deps);
  server.on('upgrade', tunnel);
  server.on('connect', tunnel);
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    log.debug('client error', { code: err.code ?? null });
    if (!socket.writable) return socket.destroy();
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout'
      : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });
  const address = await listen(server, config.listen.host, config.listen.port);
  return {
    address,
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // In-flight requests get the grace period; then long-lived streams and tunnels are
      // closed so that agents reconnect to another replica.
      const timer = setTimeout(() => {
        server.closeAllConnections();
        tunnel.closeAll();
      }, graceMs);
      await closed;
      clearTimeout(timer);
      upstream.agent.destroy();
    },
  };
}
