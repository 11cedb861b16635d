import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { markFromCoderd } from '../observability/traffic.js';
import { DescriptorWait, outOfDescriptors } from './descriptors.js';
import { classifyUpstreamError, upstreamFailure, writeCoderError } from './errors.js';
import { toFlat, toPairs, type Framing } from './headers.js';
import { dispatch, dispatchOwnConnection, UNSENDABLE_TARGET, type HopCallbacks, type HopControl, type ResponseSink, type RetryReason, type UpstreamHead } from './hop.js';
import { responseHead, writeInformational } from './response-head.js';
import { logPath } from './target.js';
import { hasBody, requestFraming, type Upstream } from './upstream.js';

/** What the pass-through needs besides the request. */
export interface ForwardDeps {
  upstream: Upstream;
  log: Logger;
  metrics: Metrics;
}

/**
 * Takes coderd's response head and says where its body goes; the default relays it. May
 * return null once the response was answered otherwise.
 */
export type ResponseHandler = (head: UpstreamHead, res: ServerResponse, hop: HopControl) => ResponseSink | null;

/**
 * Writes coderd's status line and headers (less hop-by-hop ones) to the client, after
 * checking them against what Node would refuse ({@link responseHead}). The Date header is
 * coderd's own, not one Node adds. Returns whether trailers can follow (the body goes out
 * chunked), or null when the head could not be relayed: the client then got a 502 in
 * coderd's shape.
 */
export function writeUpstreamHead(deps: ForwardDeps, head: UpstreamHead, res: ServerResponse): { trailers: boolean } | null {
  const req = res.req;
  const checked = responseHead(req, res, head);
  if (!checked.ok) {
    unrelayable(deps, res, checked.problem, head.statusCode);
    return null;
  }
  res.sendDate = false;
  markFromCoderd(res);
  res.writeHead(checked.status, checked.reason, toFlat(checked.headers));
  return { trailers: checked.trailers };
}

/** Answers 502 for a response of coderd's that cannot be relayed, logged and counted. */
function unrelayable(deps: ForwardDeps, res: ServerResponse, problem: string, status: number | null): void {
  const req = res.req;
  deps.metrics.upstreamErrors.inc({ kind: problem });
  deps.log.warn('upstream response not relayable', { problem, status, method: req.method ?? '', path: logPath(req.url) });
  writeCoderError(res, 502, {
    message: 'Failed to reach coderd.',
    detail: `coder-reinit-guard got a response from the upstream that cannot be relayed (${problem}).`,
  });
}

/**
 * Ends the client's response once coderd's ended cleanly, passing coderd's trailers on when
 * the client's response is chunked (the only way a trailer section can follow).
 */
export function endResponse(res: ServerResponse, rawTrailers: string[], trailers: boolean): void {
  if (trailers && rawTrailers.length) {
    try {
      res.addTrailers(toPairs(rawTrailers) as Array<[string, string]>);
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
  if (!socket || socket.destroyed) return void res.destroy();
  // What was just written may still sit in the response: Node 24 and later hand it to the
  // socket only after the current tick, and ending the socket first loses the head and the
  // bytes (the client sees "socket hang up"). After the pending ticks, end it once flushed.
  setImmediate(() => {
    if (!socket.destroyed) socket.destroySoon();
  });
}

/**
 * The body of a relayed response: each chunk straight to the client with backpressure
 * (coderd's body pauses while the client's socket is full), then coderd's end or break.
 */
export function bodyInto(res: ServerResponse, hop: HopControl, trailers: boolean): ResponseSink {
  // The drain listener is added only when the client's socket is full, not per response.
  let waiting = false;
  const onDrain = () => {
    waiting = false;
    hop.resume();
  };
  return {
    data(chunk) {
      const ok = res.write(chunk);
      if (!ok && !waiting) {
        waiting = true;
        res.once('drain', onDrain);
      }
      return ok;
    },
    end: (rawTrailers) => endResponse(res, rawTrailers, trailers),
    broken: () => cutConnection(res),
  };
}

/** The default response handler: coderd's head, then its body, unchanged. */
export const relay =
  (deps: ForwardDeps): ResponseHandler =>
  (head, res, hop) => {
    const written = writeUpstreamHead(deps, head, res);
    return written ? bodyInto(res, hop, written.trailers) : null;
  };

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

/** How {@link forward} reaches coderd. */
export interface ForwardOptions {
  /**
   * A connection of its own (node:http) instead of the keep-alive pool: for long-lived
   * streams (`/reinit`), which would hold a pooled connection for their whole life
   * ({@link dispatchOwnConnection}).
   */
  ownConnection?: boolean;
}

/** The default: nothing allocated per request on the hot path. */
const POOLED: ForwardOptions = Object.freeze({});

/** Whether the client speaks HTTP/1.1 or later (1xx responses are for such clients only). */
const atLeast11 = (req: IncomingMessage) => req.httpVersionMajor > 1 || (req.httpVersionMajor === 1 && req.httpVersionMinor >= 1);

/**
 * One forwarded request as the hop's callbacks. A class rather than closures: its methods
 * live on the prototype, so a request allocates one object for them.
 */
class Forwarding implements HopCallbacks {
  private counted = true;
  /** Sends the request again after `ms` (set by {@link forward}). */
  resendAfter: ((ms: number) => void) | null = null;
  /** Created at the first wait for a descriptor (none on the hot path until one is needed). */
  private descriptorWait: DescriptorWait | null = null;

  constructor(
    private readonly deps: ForwardDeps,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly onResponse: ResponseHandler,
    private readonly framing: Framing,
  ) {
    deps.metrics.inflight.inc();
  }

  /** Takes the request off the in-flight gauge (once). */
  release(): void {
    if (this.counted) this.deps.metrics.inflight.dec();
    this.counted = false;
  }

  onHead(head: UpstreamHead, control: HopControl): ResponseSink | null {
    const { req, res } = this;
    try {
      const sink = this.onResponse(head, res, control);
      if (!sink) return null;
      // coderd may answer in full before reading the whole body (a 404 to an upload).
      // The rest of the body is of no use to it, but must still be read off the client's
      // connection, or the next request on that keep-alive connection is never parsed
      // and hangs (the soak found this): drop the upstream request and discard the rest,
      // as a Node or Go server does with an unread body.
      if (!hasBody(this.framing)) return sink;
      return {
        data: (chunk) => sink.data(chunk),
        broken: (err) => sink.broken(err),
        end(trailers) {
          sink.end(trailers);
          if (!req.readableEnded) {
            control.abort();
            req.resume();
          }
        },
      };
    } catch (err) {
      failRequest(this.deps, 'response', req, res, err);
      return null;
    }
  }

  onInformational(head: UpstreamHead): void {
    const { req, res } = this;
    // 100 Continue is hop-by-hop: Node's server already answered a client's Expect, and
    // neither hop asks coderd to wait. Other 1xx (103 Early Hints, 102, ...) reach the
    // client as coderd sent them, before the final head; never an HTTP/1.0 client, which
    // would take one for the final answer (RFC 9110 §15.2).
    if (head.statusCode === 100 || res.headersSent || !atLeast11(req)) return;
    writeInformational(res, head);
  }

  onRetry(reason: RetryReason): void {
    const { deps, req } = this;
    deps.metrics.upstreamRetries.inc({ reason });
    deps.log.debug('upstream request sent again', { reason, method: req.method ?? '', path: logPath(req.url) });
  }

  onFailure(err: Error): void {
    const { deps, req, res } = this;
    if (res.headersSent || res.destroyed) return void res.destroy();
    const code = (err as { code?: string }).code;
    if (outOfDescriptors(err) && this.waitForDescriptor()) return;
    if (err.message === 'bad upgrade') return unrelayable(deps, res, 'unrequested_upgrade', 101);
    if (code === 'ERR_ASSERTION') return unrelayable(deps, res, 'invalid_status', null);
    if (code === 'UND_ERR_INVALID_ARG' || code === UNSENDABLE_TARGET) {
      // A request the hop will not send (an odd target such as `GET *`): the client's.
      deps.metrics.refused.inc({ reason: 'unsendable' });
      return writeCoderError(res, 400, { message: 'Bad Request.', detail: 'coder-reinit-guard cannot forward this request target.' }, true);
    }
    const kind = classifyUpstreamError(err);
    deps.metrics.upstreamErrors.inc({ kind });
    deps.log.warn('upstream request failed', { kind, code: code ?? null, method: req.method ?? '', path: logPath(req.url) });
    const { status, body } = upstreamFailure(kind, err);
    writeCoderError(res, status, body);
  }

  /**
   * The guard ran out of file descriptors opening coderd's connection (descriptors.ts): a
   * bodiless request waits and is sent again. A body may already be partly read: such a
   * request fails as before.
   */
  private waitForDescriptor(): boolean {
    const { deps, req } = this;
    if (hasBody(this.framing) || !this.resendAfter) return false;
    this.descriptorWait ??= new DescriptorWait(deps.upstream.connectTimeoutMs);
    const ms = this.descriptorWait.next();
    if (ms === null) return false;
    deps.metrics.upstreamRetries.inc({ reason: 'no_descriptor' });
    if (this.descriptorWait.first) deps.log.debug('no file descriptor for coderd\'s connection: waiting', { method: req.method ?? '', path: logPath(req.url) });
    this.resendAfter(ms);
    return true;
  }
}

/**
 * Proxies one request to coderd: streams the body up (only ever with explicit framing),
 * hands the response head to `onResponse` (relay by default), and maps a failure before
 * any response to coderd's JSON error shape.
 */
export function forward(deps: ForwardDeps, req: IncomingMessage, res: ServerResponse, onResponse: ResponseHandler = relay(deps), opts: ForwardOptions = POOLED): void {
  const framing = requestFraming(req);
  const call = new Forwarding(deps, req, res, onResponse, framing);
  const send = () => (opts.ownConnection ? dispatchOwnConnection : dispatch)(deps.upstream, req, framing, call);
  let hop = send();
  let waiting: NodeJS.Timeout | undefined;
  call.resendAfter = (ms) => {
    waiting = setTimeout(() => {
      waiting = undefined;
      if (!res.destroyed && !res.writableEnded) hop = send();
    }, ms);
  };
  res.once('close', () => {
    call.release();
    clearTimeout(waiting);
    // The client left before the response finished: free the upstream request now.
    if (!res.writableFinished) hop.abort();
  });
}
