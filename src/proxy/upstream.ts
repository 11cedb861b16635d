import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Socket } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { Pool } from 'undici';
import type { Config } from '../config/index.js';
import { isHeader, upstreamRequestHeaders, toFlat, type Framing } from './headers.js';
import { originForm } from './target.js';

/** Where proxied requests go, with the keep-alive pool to get there. */
export interface Upstream {
  readonly url: URL;
  /**
   * coderd's host as a connection takes it: an IPv6 literal without the brackets the URL
   * keeps (`url.hostname` of `http://[::1]:7080` is `[::1]`, which no resolver knows).
   */
  readonly hostname: string;
  /** "host:port" of coderd, used when a client sends no Host header. */
  readonly hostPort: string;
  /** undici's keep-alive pool for bodiless requests with an idempotent method (hop.ts). */
  readonly pool: Pool;
  /**
   * node:http's keep-alive agent: requests with a body, and requests undici is not given
   * (hop.ts).
   */
  readonly agent: http.Agent;
  /**
   * node:http's keep-alive agent for the guard's own reads of coderd (buildinfo: readiness
   * probe, retirement), apart from proxied traffic so that the connection gauges can tell
   * the two apart.
   */
  readonly controlAgent: http.Agent;
  /**
   * node:http's agent for connections of their own ({@link openUpstream}): it never keeps
   * or reuses one. Shared rather than `agent: false`, which builds an Agent per request
   * (twice the time to coderd's head on loopback, 0.28 ms against 0.14 ms). Its cost: it
   * lists every open socket and finds a released one by a scan, microseconds at 10,000.
   */
  readonly ownAgent: http.Agent;
  readonly request: typeof http.request;
  readonly forwardedHeaders: boolean;
  readonly connectTimeoutMs: number;
  /** TLS options for connections made outside the pool (upgrades, CONNECT). */
  readonly tlsOptions: { ca?: string[]; servername?: string };
}

/** Options for reaching coderd. */
export interface UpstreamOptions {
  url: URL;
  forwardedHeaders: boolean;
  /** Deadline for opening a connection (TCP, and TLS for https). */
  connectTimeoutMs?: number;
  /** PEM bundle of extra CAs trusted for an https upstream (added to the system ones). */
  ca?: string;
  /** Name to verify coderd's certificate against and send as SNI, if not the URL's host. */
  servername?: string;
}

/**
 * Creates the upstream target with one keep-alive pool: every proxied request reuses warm
 * connections to coderd instead of paying a TCP (and TLS) handshake each time.
 */
export function createUpstream(opts: UpstreamOptions): Upstream {
  const secure = opts.url.protocol === 'https:';
  const port = opts.url.port || (secure ? '443' : '80');
  const agentOptions = { keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024, scheduling: 'lifo' as const };
  // A custom bundle adds to Node's default roots instead of replacing them.
  const ca = opts.ca ? [...tls.rootCertificates, opts.ca] : undefined;
  const tlsOptions = { ...(ca ? { ca } : {}), ...(opts.servername ? { servername: opts.servername } : {}) };
  // Every agent trusts what the pool trusts.
  const makeAgent = (options: http.AgentOptions) => (secure ? new https.Agent({ ...options, ...tlsOptions }) : new http.Agent(options));
  const agent = makeAgent(agentOptions);
  const controlAgent = makeAgent({ keepAlive: true, maxSockets: 2 });
  const ownAgent = makeAgent({ keepAlive: false, maxSockets: Infinity });
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  const pool = new Pool(opts.url.origin, {
    // Streams, long polls and uploads may take hours: no deadline on heads or bodies; only
    // connecting is bounded (504 past it).
    headersTimeout: 0,
    bodyTimeout: 0,
    connectTimeout: connectTimeoutMs,
    maxHeaderSize: MAX_HEADER_BYTES,
    connect: { ...tlsOptions },
  });
  return {
    url: opts.url,
    hostname: opts.url.hostname.replace(/^\[(.*)\]$/, '$1'),
    hostPort: `${opts.url.hostname}:${port}`,
    pool,
    agent,
    controlAgent,
    ownAgent,
    request: secure ? https.request : http.request,
    forwardedHeaders: opts.forwardedHeaders,
    connectTimeoutMs,
    tlsOptions,
  };
}

/** Creates the upstream pool from the guard's configuration. */
export const upstreamFrom = (config: Config): Upstream =>
  createUpstream({
    url: config.upstream,
    forwardedHeaders: config.forwardedHeaders === 'append',
    connectTimeoutMs: config.upstreamConnectTimeoutMs,
    ca: config.upstreamCa,
    servername: config.upstreamServername,
  });

/** Methods Node's client sends without body framing when none is given. */
const BODYLESS_BY_DEFAULT = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/**
 * How the guard frames a request's body upstream, from what Node's parser validated
 * (RFC 9112 §6.3): only framing says whether there is a body, whatever the method.
 */
export function requestFraming(req: IncomingMessage): Framing {
  if (req.headers['transfer-encoding'] !== undefined) return { kind: 'chunked' };
  const length = req.headers['content-length'];
  if (length !== undefined) return { kind: 'length', length: length.trim() };
  return { kind: 'none', zeroLength: !BODYLESS_BY_DEFAULT.has(req.method ?? 'GET') };
}

/** Whether a framing carries a body the guard must stream upstream. */
export const hasBody = (framing: Framing): boolean => framing.kind !== 'none';

/** Header bytes the guard accepts from coderd (as from clients): nothing is ever cut short. */
export const MAX_HEADER_BYTES = 64 * 1024;

/** How {@link openUpstream} reaches coderd, besides the request itself. */
export interface OpenOptions {
  /** The value of Upgrade when the request is an upgrade the guard tunnels. */
  upgrade?: string;
  /** CONNECT's authority-form target. */
  connectTarget?: string;
  /**
   * Reuse warm connections of the keep-alive agent (`upstream.agent`): for ordinary
   * requests with a body. Otherwise the request gets a connection of its own
   * (`upstream.ownAgent`).
   */
  keepAlive?: boolean;
}

const NO_OPTIONS: OpenOptions = Object.freeze({});

/**
 * Starts the upstream request for an incoming one on node:http: same method, target and
 * headers (less hop-by-hop ones). For requests that keep their connection for good or for
 * long (upgrades and CONNECT in tunnel.ts, `/reinit` streams in hop.ts), a connection of
 * their own; for ordinary requests with a body, and the retry of a bodiless one (hop.ts),
 * the keep-alive agent or a fresh connection. The caller streams the body and handles the
 * response.
 */
export function openUpstream(upstream: Upstream, req: IncomingMessage, framing: Framing, opts: OpenOptions = NO_OPTIONS): http.ClientRequest {
  const { upgrade, connectTarget } = opts;
  let headers = upstreamRequestHeaders(req.rawHeaders, {
    remoteAddress: req.socket.remoteAddress,
    encrypted: Boolean((req.socket as { encrypted?: boolean }).encrypted),
    upstreamHost: upstream.hostPort,
    forwarded: upstream.forwardedHeaders,
    upgrade,
    framing,
  });
  // Node's server already answered a client's `Expect: 100-continue` and reads the body as
  // it comes: coderd is not asked to wait (the undici hop drops it too, so an ordinary
  // request reaches coderd the same way on either hop). Tunnels pass it as sent.
  if (upgrade === undefined && connectTarget === undefined) headers = headers.filter(([k]) => !isHeader(k, 'expect'));
  const upReq = upstream.request({
    protocol: upstream.url.protocol,
    hostname: upstream.hostname,
    port: upstream.url.port || undefined,
    method: req.method,
    // CONNECT carries an authority-form target; it too goes only to coderd.
    path: connectTarget ?? originForm(req.url ?? '/'),
    // A flat raw array keeps order, case and repeats; Node sends it as given.
    headers: toFlat(headers) as unknown as http.OutgoingHttpHeaders,
    // A connection of its own (with the same trust settings as the pool) is never reused:
    // an upgraded or CONNECT socket leaves HTTP for good, and a /reinit stream lasts until
    // one side ends it. Node sends `Connection: close`, which says just that. The
    // keep-alive agent sends `Connection: keep-alive`, as the undici pool does.
    agent: opts.keepAlive ? upstream.agent : upstream.ownAgent,
    setHost: false,
    maxHeaderSize: MAX_HEADER_BYTES,
  });
  // Node's client keeps only the first ~1,000 response header lines by default and drops
  // the rest silently (Content-Length among them): never relay a different response.
  upReq.maxHeadersCount = 0;
  upReq.once('socket', (socket) => boundConnect(upReq, socket, upstream.connectTimeoutMs));
  return upReq;
}

/**
 * Fails a request whose new connection is not established in time. Only connecting is
 * bounded: a response may legitimately take hours (long polls, streams).
 */
function boundConnect(upReq: http.ClientRequest, socket: Socket, ms: number): void {
  if (!socket.connecting) return; // A warm keep-alive socket.
  const connected = 'encrypted' in socket ? 'secureConnect' : 'connect';
  const timer = setTimeout(() => {
    upReq.destroy(Object.assign(new Error(`no connection to coderd within ${ms}ms`), { code: 'UPSTREAM_CONNECT_TIMEOUT' }));
  }, ms);
  const clear = () => clearTimeout(timer);
  socket.once(connected, clear);
  socket.once('close', clear);
}
