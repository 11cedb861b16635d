import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config/index.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { rawRefusal, refusal, unparsedVersionRefusal, type CoderRefusal } from '../proxy/admission.js';
import { answerInstead, serialiseRequests, serialiseUpgrades, whenIdle } from '../proxy/pipeline.js';
import { rawCoderError } from '../proxy/errors.js';
import { hostFromTarget } from '../proxy/headers.js';
import { logPath } from '../proxy/target.js';
import { createTunnelHandler } from '../proxy/tunnel.js';
import { isReinitRoute } from '../reinit/wait.js';
import type { Upstream } from '../proxy/upstream.js';
import type { Decider } from '../reinit/decider.js';
import { listenAll, listenSockets } from './listen.js';
import { createProxyListener } from './proxy-app.js';

/**
 * An upgrade request with a chunked body: its end is only known by parsing the chunks,
 * which Node's parser no longer does for an upgrade request. Refused rather than guessed;
 * clients never send one (a Content-Length body is forwarded).
 */
const CHUNKED_UPGRADE: CoderRefusal = {
  status: 400,
  reason: 'chunked_upgrade',
  body: { message: 'Bad Request.', detail: 'An upgrade request cannot carry a chunked body through coder-reinit-guard.' },
};

/** The data plane: the proxy listener(s), the upgrade/CONNECT tunnel and the upstream pool. */
export interface ProxyServer {
  address: AddressInfo;
  /** The TLS listener's address, when REINIT_GUARD_TLS_LISTEN is set. */
  tlsAddress: AddressInfo | null;
  /** Listening sockets per address (SO_REUSEPORT, {@link listenSockets}). */
  listenSockets: number;
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
      ? { mode: config.mode, decider: opts.decider, peekTimeoutMs: config.peekTimeoutMs, peekMaxBytes: config.peekMaxBytes, holdMaxMs: config.holdMaxMs, holdRecheckMs: config.holdRecheckMs }
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
  const listener = createProxyListener({ ...deps, reinit, retired: opts.retired, accessLog: config.accessLog });
  const tunnel = createTunnelHandler(deps);
  /**
   * Upgrades and CONNECT. Refused requests are answered on the raw socket; a request coderd
   * would route to its reinit handler is never tunnelled (an `Upgrade` header must not be a
   * way around the inspection): it is served as the plain request coderd sees it as.
   */
  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    try {
      const refused = refusal(req) ?? (req.headers['transfer-encoding'] !== undefined ? CHUNKED_UPGRADE : null);
      if (refused) {
        metrics.refused.inc({ reason: refused.reason });
        log.info('request refused', { reason: refused.reason, method: req.method ?? '', path: logPath(req.url) });
        socket.end(rawRefusal(refused));
        return;
      }
      // An absolute-form target names the Host coderd sees, tunnelled or not (hostFromTarget).
      req.rawHeaders = hostFromTarget(req.rawHeaders, req.url ?? '');
      if (isReinitRoute(req.method, req.url ?? '')) serveAsPlainRequest(listener, req, socket);
      else tunnel(req, socket, head);
    } catch (err) {
      metrics.internalErrors.inc({ where: 'upgrade' });
      log.error('request failed inside the guard', { where: 'upgrade', error: (err as NodeJS.ErrnoException).code ?? 'unknown', method: req.method ?? '', path: logPath(req.url) });
      socket.destroy();
    }
  };
  /**
   * A request Node's parser refuses. Like Node's own handler, a response already on its way
   * for an earlier request on the connection is never corrupted: every request parsed
   * before the bad bytes is answered first, then the refusal is sent and the connection
   * closed (nginx answers pipelined garbage the same way). An error inside the body of a
   * request ends that request: it can never be completed, so it is never forwarded if it
   * is still waiting for its turn. Data after an HTTP/1.0 request that asked to close the
   * connection (HPE_CLOSED_CONNECTION) is ignored: the connection closes after that response.
   * A client that ends its side mid-request (HPE_INVALID_EOF_STATE) has left.
   */
  const onClientError = (err: NodeJS.ErrnoException, socket: Duplex) => {
    log.debug('client error', { code: err.code ?? null });
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout'
      : '400 Bad Request';
    // A version Node's parser refuses and Go would parse (`HTTP/3.0`): Go's 505, as coderd.
    const { rawPacket, bytesParsed } = err as { rawPacket?: Buffer; bytesParsed?: number };
    const version = err.code === 'HPE_INVALID_VERSION' ? unparsedVersionRefusal(rawPacket, bytesParsed) : null;
    if (version) {
      metrics.refused.inc({ reason: version.reason });
      log.info('request refused', { reason: version.reason });
    }
    const answer = version ? rawRefusal(version) : `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`;
    const refuse = () => (socket.writable ? socket.end(answer) : socket.destroy());
    // The client ended its side in the middle of a request: it left, as on a FIN between
    // requests, where Node ends the connection at once. The request in flight is released
    // when the connection closes, the waiting ones are dropped, never forwarded.
    if (err.code === 'HPE_INVALID_EOF_STATE') return void socket.end();
    // The request the parser was reading when it failed.
    const parsing = (socket as { parser?: { incoming?: http.IncomingMessage | null } | null }).parser?.incoming;
    if (parsing && !parsing.complete) {
      const inflight = (socket as { _httpMessage?: http.ServerResponse | null })._httpMessage;
      // Closing the connection releases its upstream request.
      if (inflight?.req === parsing) return inflight.headersSent ? socket.destroy() : refuse();
      return answerInstead(parsing, refuse);
    }
    whenIdle(socket, () => (err.code === 'HPE_CLOSED_CONNECTION' ? socket.end() : refuse()));
  };
  // One request in flight upstream per client connection (pipeline.ts); requests served as
  // plain on the upgrade path are past that queue already, so they get the bare listener.
  const requests = serialiseRequests(listener);
  const upgrades = serialiseUpgrades(onUpgrade);
  const wire = <S extends http.Server>(server: S): S => {
    server.on('upgrade', upgrades);
    server.on('connect', upgrades);
    server.on('clientError', onClientError);
    // Node keeps only the first ~1,000 header lines by default and drops the rest silently
    // (a Content-Length among them): a different request would be forwarded. Header bytes
    // stay bounded by maxHeaderSize (431 past it).
    server.maxHeadersCount = 0;
    return server;
  };
  const servers: http.Server[] = [];
  let clients = 0;
  const countClients = (server: http.Server) =>
    server.on('connection', (socket: Duplex) => {
      clients++;
      socket.once('close', () => clients--);
    });
  const sockets = listenSockets(config.listenBacklog);
  const plain = await listenAll(() => countClients(wire(http.createServer(serverOptions, requests))), config.listen.host, config.listen.port, config.listenBacklog, sockets, 'REINIT_GUARD_LISTEN');
  servers.push(...plain.servers);
  const address = plain.address;
  metrics.connectionSources = {
    client: () => clients,
    upstream: () => upstream.pool.stats.connected + agentSockets(upstream.agent) + agentSockets(upstream.ownAgent) + tunnel.splicedUpstream(),
    control: () => agentSockets(upstream.controlAgent),
  };
  let tlsAddress: AddressInfo | null = null;
  if (config.tlsListen && config.tlsCert && config.tlsKey) {
    // Same handler, same tunnel: a client that reached coderd on 443 sees the same guard.
    const { tlsCert: cert, tlsKey: key } = config;
    const tls = await listenAll(() => countClients(wire(https.createServer({ ...serverOptions, cert, key }, requests))), config.tlsListen.host, config.tlsListen.port, config.listenBacklog, sockets, 'REINIT_GUARD_TLS_LISTEN');
    servers.push(...tls.servers);
    tlsAddress = tls.address;
  }
  return {
    address,
    tlsAddress,
    listenSockets: sockets,
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
      upstream.controlAgent.destroy();
      upstream.ownAgent.destroy();
      await upstream.pool.destroy();
    },
  };
}

/** Sockets an http.Agent holds, busy and idle. */
function agentSockets(agent: http.Agent): number {
  let n = 0;
  // A destroyed socket's descriptor is already closed (libuv closes it at once); the agent
  // forgets it only at its 'close' event, a moment later. Counted by what is open, so that a
  // client leaving and the guard closing its upstream are seen together.
  const open = (list: Array<{ destroyed: boolean }> | undefined) => {
    for (const s of list ?? []) if (!s.destroyed) n++;
  };
  for (const list of Object.values(agent.sockets)) open(list);
  for (const list of Object.values(agent.freeSockets)) open(list);
  return n;
}

/**
 * Serves an upgrade request as a plain HTTP request on its raw socket (Node hands upgrade
 * requests to 'upgrade' listeners without a response object): the response is written
 * through a ServerResponse bound to the socket, and the connection closes after it, since
 * whatever the client sent after the head is not read. Its body, if it announced one, is
 * refused: the parser no longer reads it.
 */
function serveAsPlainRequest(listener: http.RequestListener, req: http.IncomingMessage, socket: Duplex): void {
  const res = new http.ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket as import('node:net').Socket);
  res.once('finish', () => {
    res.detachSocket(socket as import('node:net').Socket);
    socket.end();
  });
  const length = req.headers['content-length'];
  if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && Number(length) !== 0)) {
    socket.end(rawCoderError(400, 'Bad Request', { message: 'Bad Request.', detail: 'An upgrade request to this path cannot carry a body.' }));
    return;
  }
  // Node marked the request complete-less (its parser stopped at the head): end it, so the
  // forwarder sees a bodiless GET.
  req.push(null);
  listener(req, res);
}
