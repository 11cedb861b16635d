import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config/index.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { createTunnelHandler } from '../proxy/tunnel.js';
import type { Upstream } from '../proxy/upstream.js';
import type { Decider } from '../reinit/decider.js';
import { listen } from './listen.js';
import { createProxyListener } from './proxy-app.js';

/** The data plane: the proxy listener(s), the upgrade/CONNECT tunnel and the upstream pool. */
export interface ProxyServer {
  address: AddressInfo;
  /** The TLS listener's address, when REINIT_GUARD_TLS_LISTEN is set. */
  tlsAddress: AddressInfo | null;
  /** Stops accepting, lets in-flight requests finish within `graceMs`, then closes the rest. */
  close(graceMs: number): Promise<void>;
}

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
  const serverOptions = {
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
  };
  const listener = createProxyListener({ ...deps, reinit, retired: opts.retired });
  const tunnel = createTunnelHandler(deps);
  const onClientError = (err: NodeJS.ErrnoException, socket: Duplex) => {
    log.debug('client error', { code: err.code ?? null });
    if (!socket.writable) return socket.destroy();
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout'
      : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  };
  const wire = <S extends http.Server>(server: S): S => {
    server.on('upgrade', tunnel);
    server.on('connect', tunnel);
    server.on('clientError', onClientError);
    return server;
  };
  const servers: http.Server[] = [wire(http.createServer(serverOptions, listener))];
  const address = await listen(servers[0]!, config.listen.host, config.listen.port);
  let tlsAddress: AddressInfo | null = null;
  if (config.tlsListen && config.tlsCert && config.tlsKey) {
    // Same handler, same tunnel: a client that reached coderd on 443 sees the same guard.
    const tlsServer = wire(https.createServer({ ...serverOptions, cert: config.tlsCert, key: config.tlsKey }, listener));
    servers.push(tlsServer);
    tlsAddress = await listen(tlsServer, config.tlsListen.host, config.tlsListen.port);
  }
  return {
    address,
    tlsAddress,
    async close(graceMs) {
      const closed = Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
      for (const server of servers) server.closeIdleConnections();
      // In-flight requests get the grace period; then long-lived streams and tunnels are
      // closed so that agents reconnect to another replica.
      const timer = setTimeout(() => {
        for (const server of servers) server.closeAllConnections();
        tunnel.closeAll();
      }, graceMs);
      await closed;
      clearTimeout(timer);
      upstream.agent.destroy();
    },
  };
}
