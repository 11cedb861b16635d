import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { classifyUpstreamError, upstreamFailure, writeCoderError } from './errors.js';
import { toFlat, toPairs } from './headers.js';
import { responseHead } from './response-head.js';
import { logPath } from './target.js';
import { hasBody, openUpstream, requestFraming, type Upstream } from './upstream.js';

/** What the pass-through needs besides the request. */
export interface ForwardDeps {
  upstream: Upstream;
  log: Logger;
  metrics: Metrics;
}

/** Handles coderd's response; the default relays it unchanged. May be async. */
export type ResponseHandler = (upRes: IncomingMessage, res: ServerResponse, upReq: ClientRequest) => void | Promise<void>;

/**
 * Writes coderd's status line and headers (less hop-by-hop ones) to the client, after
 * checking them against what Node would refuse ({@link responseHead}). The Date header is
 * coderd's own, not one Node adds. Returns whether trailers can follow (the body goes out
 * chunked), or null when the head could not be relayed: the client then got a 502 in
 * coderd's shape and coderd's response was dropped.
 */
export function writeUpstreamHead(deps: ForwardDeps, upRes: IncomingMessage, res: ServerResponse): { trailers: boolean } | null {
  const req = res.req;
  const head = responseHead(req, res, upRes);
  if (!head.ok) {
    deps.metrics.upstreamErrors.inc({ kind: head.problem });
    deps.log.warn('upstream response not relayable', { problem: head.problem, status: upRes.statusCode ?? null, method: req.method ?? '', path: logPath(req.url) });
    upRes.destroy();
    writeCoderError(res, 502, {
      message: 'Failed to reach coderd.',
      detail: `coder-reinit-guard got a response from the upstream that cannot be relayed (${head.problem}).`,
    });
    return null;
  }
  res.sendDate = false;
  res.writeHead(head.status, head.reason, toFlat(head.headers));
  return { trailers: head.trailers };
}

/**
 * Ends the client's response once coderd's ended cleanly, passing coderd's trailers on when
 * the client's response is chunked (the only way a trailer section can follow).
 */
export function endResponse(res: ServerResponse, upRes: IncomingMessage, trailers: boolean): void {
  if (trailers && upRes.rawTrailers.length) {
    try {
      res.addTrailers(toPairs(upRes.rawTrailers) as Array<[string, string]>);
    } catch {
      // A trailer Node refuses to write is dropped, as Go's server drops invalid ones.
    }
  }
  res.end();
}

/**
 * Ends the client's connection without finishing its response, once the bytes already
 * written are flushed: coderd broke off mid-body, and the client must see the same break,
 * after everything coderd did send.
 */
export function cutConnection(res: ServerResponse): void {
  const socket = res.socket;
  if (socket && !socket.destroyed) socket.destroySoon();
  else res.destroy();
}

/**
 * Streams the rest of coderd's response body to the client with backpressure, and its
 * trailers. If either side fails, both are torn down: the client sees the connection end
 * as it would talking to coderd, and a departed client releases the upstream connection.
 */
export function streamBody(upRes: IncomingMessage, res: ServerResponse, trailers: boolean): void {
  // pipe, plus one close check, rather than stream.pipeline: pipeline builds and fires an
  // AbortController per call, which measured at ~13% of the guard's CPU on small requests.
  upRes.pipe(res, { end: !trailers });
  if (trailers) upRes.once('end', () => endResponse(res, upRes, true));
  upRes.once('close', () => {
    if (!upRes.complete) cutConnection(res); // coderd went away mid-body: so does the client.
  });
}

/** Relays a whole upstream response: head, then body, optionally after some peeked bytes. */
export function relayResponse(deps: ForwardDeps, upRes: IncomingMessage, res: ServerResponse, prefix?: Buffer): void {
  const head = writeUpstreamHead(deps, upRes, res);
  if (!head) return;
  if (prefix?.length) res.write(prefix);
  streamBody(upRes, res, head.trailers);
}

/**
 * The last resort of every per-request path: whatever threw is logged and counted, and only
 * this request ends (a 502 in coderd's shape if nothing was sent yet, else the connection
 * is cut, as a broken upstream would cut it). The process and every other connection go on.
 */
export function failRequest(deps: Pick<ForwardDeps, 'log' | 'metrics'>, where: string, req: IncomingMessage, res: ServerResponse, err: unknown): void {
  deps.metrics.internalErrors.inc({ where });
  const e = err as { code?: unknown; name?: unknown; message?: unknown } | null;
  deps.log.error('request failed inside the guard', {
    where,
    error: typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : 'unknown',
    // Node's messages name headers, never their values; bounded all the same.
    detail: typeof e?.message === 'string' ? e.message.slice(0, 200) : null,
    method: req.method ?? '',
    path: logPath(req.url),
  });
  try {
    writeCoderError(res, 502, { message: 'Internal error in coder-reinit-guard.', detail: `The guard could not relay this request (${where}); see its log.` });
  } catch {
    res.destroy();
  }
}

/**
 * Proxies one request to coderd: streams the body up (only ever with explicit framing),
 * hands the response to `onResponse` (relay by default), and maps a failure before any
 * response to coderd's JSON error shape.
 */
export function forward(deps: ForwardDeps, req: IncomingMessage, res: ServerResponse, onResponse?: ResponseHandler): void {
  const framing = requestFraming(req);
  const upReq = openUpstream(deps.upstream, req, framing);
  deps.metrics.inflight.inc();
  let responded = false;
  let counted = true;
  const release = () => {
    if (counted) deps.metrics.inflight.dec();
    counted = false;
  };

  res.once('close', () => {
    release();
    // The client left before the response finished: free the upstream connection now.
    if (!res.writableFinished) upReq.destroy();
  });
  upReq.once('error', (err) => {
    // Once coderd's response arrived, its end (or break) is the response handler's to
    // relay: the client sees coderd's head, the bytes, then the break, never a late 502.
    if (responded) return;
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const kind = classifyUpstreamError(err);
    deps.metrics.upstreamErrors.inc({ kind });
    deps.log.warn('upstream request failed', { kind, code: (err as { code?: string }).code ?? null, method: req.method ?? '', path: logPath(req.url) });
    const { status, body } = upstreamFailure(kind, err);
    writeCoderError(res, status, body);
  });
  // coderd answering 101 to a request that asked for no upgrade: Node's client hands the
  // socket to 'upgrade' listeners (or silently drops it), never to 'response'.
  upReq.once('upgrade', (upRes, socket) => {
    socket.destroy();
    writeUpstreamHead(deps, upRes, res);
  });
  upReq.once('response', (upRes) => {
    responded = true;
    const fail = (err: unknown) => {
      upReq.destroy();
      failRequest(deps, 'response', req, res, err);
    };
    try {
      const done = onResponse ? onResponse(upRes, res, upReq) : relayResponse(deps, upRes, res);
      if (done) done.catch(fail);
    } catch (err) {
      fail(err);
    }
  });

  if (hasBody(framing)) {
    // pipe, not pipeline: an upstream failure must not destroy the client socket before
    // the 502 is written. A client that leaves mid-body is handled by the close above.
    req.pipe(upReq);
    // coderd may answer in full before reading the whole body (a 404 to an upload). Then
    // the rest of the body is of no use to it, but must still be read off the client's
    // connection, or the next request on that keep-alive connection is never parsed and
    // hangs (the soak found this). Drop the upstream connection (it is mid-body, not
    // reusable) and discard the rest, as a Node or Go server does with an unread body.
    upReq.once('response', (upRes) => {
      upRes.once('end', () => {
        if (req.readableEnded) return;
        req.unpipe(upReq);
        upReq.destroy();
        req.resume();
      });
    });
  } else {
    upReq.end();
  }
}
