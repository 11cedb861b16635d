import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import type { Config } from '../config/index.js';
import { createDbClient, type Sql } from '../db/client.js';
import { createQueries } from '../db/queries.js';
import type { Logger } from '../observability/log.js';
import { createMetrics, type Metrics } from '../observability/metrics.js';
import { createTunnelHandler } from '../proxy/tunnel.js';
import { createUpstream, type Upstream } from '../proxy/upstream.js';
import { createDecider } from '../reinit/decider.js';
import { createAdminApp, type CheckResult } from './admin-app.js';
import { createProxyListener } from './proxy-app.js';

/** A running guard. */
export interface Guard {
  /** Where proxied traffic is served. */
  proxyAddress: AddressInfo;
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

const listen = (server: http.Server, host: string, port: number) =>
  new Promise<AddressInfo>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });

const withTimeout = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} timed out after ${ms}ms`)), ms).unref())]);

/**
 * Starts the guard: the proxy listener (Hono app plus the upgrade/CONNECT tunnel) and the
 * admin listener. In mode off no database client is even created.
 */
export async function startGuard(config: Config, opts: StartOptions): Promise<Guard> {
  const { log } = opts;
  const metrics = opts.metrics ?? createMetrics();
  const upstream = createUpstream({
    url: config.upstream,
    forwardedHeaders: config.forwardedHeaders === 'append',
    connectTimeoutMs: config.upstreamConnectTimeoutMs,
    ca: config.upstreamCa,
  });

  let sql: Sql | null = null;
  let reinit;
  if (config.mode !== 'off') {
    sql = createDbClient({
      url: config.pgUrl as string,
      poolSize: config.dbPoolSize,
      statementTimeoutMs: config.dbTimeoutMs,
      connectTimeoutMs: config.dbConnectTimeoutMs,
    });
    const decider = createDecider({
      queries: createQueries(sql),
      timeoutMs: config.dbTimeoutMs,
      cacheSize: config.cacheSize,
      finalTtlMs: config.suppressCacheTtlMs,
      transientTtlMs: config.passCacheTtlMs,
      onCache: (result) => metrics.cache.inc({ result }),
    });
    reinit = { mode: config.mode, decider, peekTimeoutMs: config.peekTimeoutMs, peekMaxBytes: config.peekMaxBytes };
  }

  const deps = { upstream, log, metrics };
  const proxy = http.createServer(
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
    createProxyListener({ ...deps, reinit }),
  );
  const tunnel = createTunnelHandler(deps);
  proxy.on('upgrade', tunnel);
  proxy.on('connect', tunnel);
  proxy.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    log.debug('client error', { code: err.code ?? null });
    if (!socket.writable) return socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });

  let draining = false;
  const queries = sql ? createQueries(sql) : null;
  const checks: Record<string, () => Promise<CheckResult>> = {
    upstream: () => probeUpstream(upstream),
  };
  if (queries) checks.database = () => withTimeout(queries.ping(), config.dbTimeoutMs, 'database ping').then(() => ({ ok: true }));
  const admin = http.createServer(
    getRequestListener(createAdminApp({ registry: metrics.registry, checks, draining: () => draining, info: () => ({ mode: config.mode }) }).fetch, {
      overrideGlobalObjects: false,
    }),
  );

  const proxyAddress = await listen(proxy, config.listen.host, config.listen.port);
  const adminAddress = await listen(admin, config.adminListen.host, config.adminListen.port);

  return {
    proxyAddress,
    adminAddress,
    metrics,
    async close(graceMs = 10_000) {
      draining = true;
      const closed = new Promise<void>((resolve) => proxy.close(() => resolve()));
      proxy.closeIdleConnections();
      const timer = setTimeout(() => proxy.closeAllConnections(), graceMs);
      // Upgraded sockets are no longer the server's: they end with the process or their peers.
      await closed;
      clearTimeout(timer);
      await new Promise<void>((resolve) => admin.close(() => resolve()));
      admin.closeAllConnections();
      upstream.agent.destroy();
      await sql?.end({ timeout: 1 });
    },
  };
}

/**
 * Readiness of coderd: any HTTP answer below 500 from /api/v2/buildinfo within 2 s, over
 * the same pool (and TLS settings) as proxied traffic.
 */
function probeUpstream(upstream: Upstream): Promise<CheckResult> {
  return new Promise((resolve) => {
    const req = upstream.request({
      protocol: upstream.url.protocol,
      hostname: upstream.url.hostname,
      port: upstream.url.port || undefined,
      path: '/api/v2/buildinfo',
      agent: upstream.agent,
      timeout: 2000,
    });
    req.once('response', (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      resolve(status < 500 ? { ok: true } : { ok: false, detail: `buildinfo answered ${status}` });
    });
    req.once('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.once('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, detail: `unreachable: ${err.code ?? err.message}` }));
    req.end();
  });
}
