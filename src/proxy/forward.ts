import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { classifyUpstreamError, upstreamFailure, writeCoderError } from './errors.js';
import { clientResponseHeaders, toFlat } from './headers.js';
import { hasBody, openUpstream, type Upstream } from './upstream.js';

/** What the pass-through needs besides the request. */
export interface ForwardDeps {
  upstream: Upstream;
  log: Logger;
  metrics: Metrics;
}

/** Handles coderd's response; the default relays it unchanged. */
export type ResponseHandler = (upRes: IncomingMessage, res: ServerResponse, upReq: ClientRequest) => void;

/**
 * Writes coderd's status line and headers (less hop-by-hop ones) to the client. The Date
 * header is coderd's own, not one Node adds.
 */
export function writeUpstreamHead(upRes: IncomingMessage, res: ServerResponse): void {
  res.sendDate = false;
  res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, toFlat(clientResponseHeaders(upRes.rawHeaders)));
}

/**
 * Streams the rest of coderd's response body to the client with backpressure. If either
 * side fails, both are torn down: the client sees the connection end exactly as it would
 * talking to coderd, and a departed client releases the upstream connection.
 */
export function streamBody(upRes: IncomingMessage, res: ServerResponse): void {
  // pipe, plus one close check, rather than stream.pipeline: pipeline builds and fires an
  // AbortController per call, which measured at ~13% of the guard's CPU on small requests.
  upRes.pipe(res);
  upRes.once('close', () => {
    if (!upRes.complete) res.destroy(); // coderd went away mid-body: so does the client.
  });
}

/** Relays a whole upstream response: head, then body, optionally after some peeked bytes. */
export const relayResponse = (upRes: IncomingMessage, res: ServerResponse, prefix?: Buffer): void => {
  writeUpstreamHead(upRes, res);
  if (prefix?.length) res.write(prefix);
  streamBody(upRes, res);
};

/**
 * Proxies one request to coderd: streams the body up, hands the response to `onResponse`
 * (relay by default), and maps a failure before any response to coderd's JSON error shape.
 */
export function forward(deps: ForwardDeps, req: IncomingMessage, res: ServerResponse, onResponse: ResponseHandler = (upRes, r) => relayResponse(upRes, r)): void {
  const upReq = openUpstream(deps.upstream, req);
  deps.metrics.inflight.inc();
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
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const kind = classifyUpstreamError(err);
    deps.metrics.upstreamErrors.inc({ kind });
    deps.log.warn('upstream request failed', { kind, code: (err as { code?: string }).code ?? null, method: req.method ?? '', path: pathOnly(req.url) });
    const { status, body } = upstreamFailure(kind, err);
    writeCoderError(res, status, body);
  });
  upReq.once('response', (upRes) => onResponse(upRes, res, upReq));

  if (hasBody(req)) {
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

/** The path of a request target without its query (queries may carry session tokens). */
export function pathOnly(target: string | undefined): string {
  const t = target ?? '';
  const q = t.indexOf('?');
  return q === -1 ? t : t.slice(0, q);
}
