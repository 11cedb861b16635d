import type { ClientRequest, IncomingMessage } from 'node:http';
import type { Dispatcher } from 'undici';
import { headerNameMatcher, upstreamRequestHeaders, type Framing, type HeaderPair } from './headers.js';
import { originForm } from './target.js';
import { openUpstream, type Upstream } from './upstream.js';

/**
 * The upstream hop of ordinary requests. Two clients sit behind one contract
 * ({@link HopCallbacks}, {@link HopControl}):
 *
 * - **undici**, for bodiless requests with an idempotent method (the small GETs that make up
 *   most of the traffic). Node's own HTTP client held the guard at about half of what the
 *   same server side does with undici (bench/results/NOTES.md). Fidelity lives in undici's
 *   low-level dispatch handler: raw header buffers in order, case and repeats, the status
 *   text as sent, trailers, and backpressure through the return value of `onData`. (Its
 *   newer handler API parses headers into an object first, so the guard implements the
 *   raw one.)
 * - **node:http**, for everything else: requests with a body (undici's body path made a
 *   64 MiB upload 0.73× nginx where node:http's client did 1.11×, bench/results/NOTES.md)
 *   and non-idempotent methods, on the keep-alive agent; `/reinit` streams, on a
 *   connection of their own ({@link dispatchOwnConnection}); and the one retry of an
 *   undici request whose connection failed before any answer, on a fresh connection.
 *
 * undici refuses two things a server may send and that the guard must relay: an unsolicited
 * `100 Continue` (it destroys the connection) and a request caught by coderd closing an
 * idle keep-alive connection (it fails the request, where nginx and Go's transport send it
 * again). Both fail before any answer reached the client, on a request that may be sent
 * again (RFC 9110 §9.2.2), so the hop sends it again once, on node:http, which parses 1xx
 * as it should. Upgrades and CONNECT stay on node:http (tunnel.ts): they need a dedicated
 * connection and the raw socket after coderd's 101, which node:http hands over as is.
 */

/** coderd's response head, as sent. */
export interface UpstreamHead {
  statusCode: number;
  statusMessage: string;
  /** Flat [name, value, ...], latin1 strings of the exact bytes. */
  rawHeaders: string[];
}

/** Where a response body goes once its head has been handled. */
export interface ResponseSink {
  /** Returns false to pause coderd's body until `HopControl.resume`. */
  data(chunk: Buffer): boolean;
  /** coderd ended the body cleanly; its trailers, if any. */
  end(rawTrailers: string[]): void;
  /** coderd broke off (reset, closed mid-body) after its head. */
  broken(err: Error): void;
}

/** Control of one upstream request. */
export interface HopControl {
  /** Asks for a pause of coderd's body (from the next chunk on). */
  pause(): void;
  resume(): void;
  /** Releases the upstream request and its connection. */
  abort(): void;
}

/** Why a request went to coderd a second time (a metrics label). */
export type RetryReason =
  | 'closed' // the connection closed before any answer (coderd's idle close raced the request)
  | 'reset' // the connection was reset before any answer
  | 'interim_100' // coderd sent a 100 Continue, which undici takes for a broken connection
  | 'no_descriptor'; // the guard had no file descriptor for the connection (forward.ts waits)

/** What a dispatch reports. */
export interface HopCallbacks {
  /** The final head. Return where its body goes, or null once the response was answered otherwise. */
  onHead(head: UpstreamHead, control: HopControl): ResponseSink | null;
  /** An interim 1xx response (100 Continue, 103 Early Hints, ...; never 101). */
  onInformational?(head: UpstreamHead): void;
  /** The request is being sent again, on a fresh connection (at most once). */
  onRetry?(reason: RetryReason): void;
  /** No head came: coderd unreachable, reset before answering, or an answer the hop refused. */
  onFailure(err: Error): void;
}

/**
 * The code of the failure reported for a request target no hop sends (`GET *`: only
 * `OPTIONS *` has an asterisk form, and the guard answers that itself). undici refuses it
 * with `UND_ERR_INVALID_ARG`; node:http would send it, so the node:http path refuses it
 * the same way.
 */
export const UNSENDABLE_TARGET = 'UNSENDABLE_TARGET';

const latin1 = (b: Buffer | string) => (typeof b === 'string' ? b : b.toString('latin1'));

const NO_TRAILERS: string[] = [];

/**
 * Headers undici sets itself or refuses: it frames the body (`transfer-encoding`), cannot
 * wait for a 100 (`expect`: Node's server already told the client to go on), and manages
 * its own connection. `host` and `content-length` are taken by undici too: it writes them
 * lowercased, first and last; their values are the client's.
 */
const managedByUndici = headerNameMatcher(new Set(['transfer-encoding', 'expect', 'connection', 'keep-alive', 'upgrade']));

function undiciHeaders(pairs: readonly HeaderPair[]): string[] {
  const out: string[] = [];
  for (const [k, v] of pairs) if (!managedByUndici(k)) out.push(k, v);
  return out;
}

/**
 * Methods whose request may be sent again when its connection failed before any answer
 * (idempotent, RFC 9110 §9.2.2). Only these go on undici, and only without a body: every
 * request undici fails in a way worth retrying can then be retried.
 */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Whether an undici failure before any response head is one the request survives when sent
 * again, and why: the connection closed or was reset under it (coderd closing an idle
 * keep-alive connection just as the request went out), or coderd sent a `100 Continue`
 * (undici destroys the connection on it, `client-h1.js` `onHeadersComplete`). Anything
 * else (refused, timed out, an answer undici cannot parse, a 101 nobody asked for) would
 * fail again and is answered at once.
 */
export function retryReason(err: Error): RetryReason | null {
  const code = (err as { code?: unknown }).code;
  if (code === 'UND_ERR_SOCKET') {
    if (err.message === 'other side closed' || err.message === 'closed') return 'closed';
    if (err.message === 'bad response') return 'interim_100';
    return null;
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset';
  return null;
}

/** One bodiless idempotent upstream request, as undici's (raw) dispatch handler. */
class Hop implements HopControl, Dispatcher.DispatchHandler {
  private abortRequest: ((err?: Error) => void) | null = null;
  private resumeBody: (() => void) | null = null;
  private sink: ResponseSink | null = null;
  private paused = false;
  private state: 'waiting' | 'streaming' | 'done' = 'waiting';
  /** The request sent again on node:http, once undici failed it before any answer. */
  private retry: HopControl | null = null;

  constructor(
    private readonly upstream: Upstream,
    private readonly req: IncomingMessage,
    private readonly framing: Framing,
    private readonly callbacks: HopCallbacks,
  ) {}

  onConnect(abort: (err?: Error) => void): void {
    this.abortRequest = abort;
    if (this.state === 'done') abort();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (this.state !== 'waiting') return false;
    const head: UpstreamHead = { statusCode, statusMessage: statusText ?? '', rawHeaders: rawHeaders.map(latin1) };
    if (statusCode >= 100 && statusCode < 200 && statusCode !== 101) {
      this.callbacks.onInformational?.(head);
      return true;
    }
    this.resumeBody = resume;
    this.state = 'streaming';
    const sink = this.callbacks.onHead(head, this);
    this.sink = sink;
    if (!sink) {
      // Answered otherwise (a head that cannot be relayed): coderd's body is not wanted.
      this.abort();
      return false;
    }
    if (statusCode === 204 || statusCode === 304) {
      // These end at their head, whatever Content-Length says (RFC 9112 §6.3; RFC 9110
      // §8.6 allows one on a 304, and a 304 to a conditional GET has it). undici then
      // fails the request with a length mismatch, after the head: the response is
      // complete here, and that failure is of no concern (it only costs the connection).
      this.state = 'done';
      sink.end(NO_TRAILERS);
      return true;
    }
    return !this.paused;
  }

  onData(chunk: Buffer): boolean {
    if (!this.sink || this.state !== 'streaming') return false;
    if (!this.sink.data(chunk)) this.paused = true;
    return !this.paused;
  }

  onComplete(trailers: string[] | Buffer[] | null): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.sink?.end(trailers ? (trailers as Array<Buffer | string>).map(latin1) : NO_TRAILERS);
  }

  onError(err: Error): void {
    const was = this.state;
    if (was === 'done') return;
    this.state = 'done';
    if (was === 'streaming') return void this.sink?.broken(err);
    const reason = retryReason(err);
    if (!reason) return this.callbacks.onFailure(err);
    // Once, on a fresh connection: a reused one could meet the same close.
    this.callbacks.onRetry?.(reason);
    this.retry = dispatchNode(this.upstream, this.req, this.framing, this.callbacks, false);
  }

  pause(): void {
    if (this.retry) this.retry.pause();
    else this.paused = true;
  }

  resume(): void {
    if (this.retry) return this.retry.resume();
    if (!this.paused) return;
    this.paused = false;
    this.resumeBody?.();
  }

  abort(): void {
    if (this.retry) return this.retry.abort();
    if (this.state === 'done') return;
    this.state = 'done';
    this.abortRequest?.();
  }
}

/**
 * Sends one request to coderd: the same method, target (origin form) and headers (less
 * hop-by-hop ones), the body streamed with the framing the guard decided. Bodiless requests
 * with an idempotent method go on undici's keep-alive pool, everything else on node:http's
 * keep-alive agent. Returns the control of the request; the callbacks report what came
 * back.
 */
export function dispatch(upstream: Upstream, req: IncomingMessage, framing: Framing, callbacks: HopCallbacks): HopControl {
  if (framing.kind !== 'none' || !IDEMPOTENT.has(req.method as string)) return dispatchNode(upstream, req, framing, callbacks, true);
  const pairs = upstreamRequestHeaders(req.rawHeaders, {
    remoteAddress: req.socket.remoteAddress,
    encrypted: Boolean((req.socket as { encrypted?: boolean }).encrypted),
    upstreamHost: upstream.hostPort,
    forwarded: upstream.forwardedHeaders,
    upgrade: undefined,
    framing,
  });
  const hop = new Hop(upstream, req, framing, callbacks);
  try {
    upstream.pool.dispatch(
      {
        path: originForm(req.url ?? '/'),
        method: req.method as Dispatcher.HttpMethod,
        headers: undiciHeaders(pairs),
        body: null,
      },
      hop,
    );
  } catch (err) {
    // undici refused the request synchronously (a header or target it will not send).
    hop.onError(err as Error);
  }
  return hop;
}

/**
 * One upstream request on a connection of its own, on node:http: for coderd's long-lived
 * streams (`/reinit`), which hold their connection for their whole life and whose
 * connection the guard destroys when it answers in coderd's place.
 *
 * Why not the pool: a stream parked on the pool is an undici Client that every ordinary
 * request's dispatch scans past (Pool looks for a free client linearly) for as long as the
 * stream lives; and releasing a request early through undici's abort builds two errors
 * with stack traces and has Node format one of them (`util.destroy(socket,
 * InformationalError)`). CPU profiles of a 5,000-agent storm with cached verdicts put that
 * release at 14-17% of the guard's time (error building and stack formatting alone 7-9%),
 * the same release on node:http at 4-8%. An undici Client per stream measured no better
 * than the pool.
 *
 * The same contract as {@link dispatch}: the callbacks see coderd's head as sent (raw
 * headers, status text), 1xx heads, the body with backpressure, trailers, and a clean end
 * or a break.
 */
export function dispatchOwnConnection(upstream: Upstream, req: IncomingMessage, framing: Framing, callbacks: HopCallbacks): HopControl {
  return dispatchNode(upstream, req, framing, callbacks, false);
}

const NOOP_CONTROL: HopControl = Object.freeze({ pause() {}, resume() {}, abort() {} });

/** One request on node:http: on the keep-alive agent, or on a connection of its own. */
function dispatchNode(upstream: Upstream, req: IncomingMessage, framing: Framing, callbacks: HopCallbacks, keepAlive: boolean): HopControl {
  if (req.url === '*') {
    callbacks.onFailure(Object.assign(new Error('the asterisk form is only for OPTIONS'), { code: UNSENDABLE_TARGET }));
    return NOOP_CONTROL;
  }
  let upReq: ClientRequest;
  try {
    upReq = openUpstream(upstream, req, framing, keepAlive ? KEEP_ALIVE : OWN_CONNECTION);
  } catch (err) {
    // node:http refused the request synchronously (a header it will not send), as undici may.
    callbacks.onFailure(err as Error);
    return NOOP_CONTROL;
  }
  return new NodeHop(upReq, req, framing, callbacks);
}

const KEEP_ALIVE = Object.freeze({ keepAlive: true });
const OWN_CONNECTION = Object.freeze({ keepAlive: false });

/** One upstream request on node:http, behind the same {@link HopControl} as {@link Hop}. */
class NodeHop implements HopControl {
  private upRes: IncomingMessage | null = null;
  private state: 'waiting' | 'streaming' | 'done' = 'waiting';

  constructor(
    private readonly upReq: ClientRequest,
    private readonly req: IncomingMessage,
    framing: Framing,
    private readonly callbacks: HopCallbacks,
  ) {
    upReq.on('error', (err) => this.failed(err));
    upReq.on('information', (info) => {
      if (this.state === 'waiting') callbacks.onInformational?.({ statusCode: info.statusCode, statusMessage: info.statusMessage, rawHeaders: info.rawHeaders });
    });
    // A 101 to a request that asked for no upgrade: Node's client hands the socket to
    // 'upgrade' listeners, never to 'response'. Reported as undici reports it (forward.ts
    // answers 502 unrequested_upgrade).
    upReq.once('upgrade', (_res: IncomingMessage, socket: { destroy(): void }) => {
      socket.destroy();
      this.failed(new Error('bad upgrade'));
    });
    upReq.once('response', (upRes: IncomingMessage) => this.onResponse(upRes));
    // pipe, not pipeline: an upstream failure must not destroy the client's socket before
    // its 502 is written. node:http never destroys the stream piped into it.
    if (framing.kind === 'none') upReq.end();
    else req.pipe(upReq);
  }

  private onResponse(upRes: IncomingMessage): void {
    if (this.state !== 'waiting') return void upRes.destroy();
    this.state = 'streaming';
    this.upRes = upRes;
    const head: UpstreamHead = { statusCode: upRes.statusCode ?? 0, statusMessage: upRes.statusMessage ?? '', rawHeaders: upRes.rawHeaders };
    const sink = this.callbacks.onHead(head, this);
    if (!sink) return this.abort(); // Answered otherwise: coderd's body is not wanted.
    upRes.on('data', (chunk: Buffer) => {
      if (this.state === 'streaming' && !sink.data(chunk)) upRes.pause();
    });
    upRes.once('end', () => {
      if (this.state !== 'streaming') return;
      this.state = 'done';
      sink.end(upRes.rawTrailers);
    });
    upRes.once('close', () => {
      if (this.state !== 'streaming') return;
      this.state = 'done';
      sink.broken(new Error('coderd closed the response before its end'));
    });
  }

  private failed(err: Error): void {
    // After the head, the response's close reports the break (and a failure after an abort
    // is the abort's own).
    if (this.state !== 'waiting') return;
    this.state = 'done';
    this.callbacks.onFailure(err);
  }

  pause(): void {
    this.upRes?.pause();
  }

  resume(): void {
    if (this.state === 'streaming') this.upRes?.resume();
  }

  abort(): void {
    // Also after coderd's clean end: the rest of the client's body is discarded (forward.ts),
    // not written into a finished request.
    this.req.unpipe(this.upReq);
    this.state = 'done';
    // The response first, without an error (it closes the socket): a stream destroyed with
    // an error formats that error's stack, and nothing here reads it.
    this.upRes?.destroy();
    this.upReq.destroy();
  }
}
