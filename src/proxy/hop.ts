import type { ClientRequest, IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { headerNameMatcher, upstreamRequestHeaders, type Framing, type HeaderPair } from './headers.js';
import { originForm } from './target.js';
import { openUpstream, type Upstream } from './upstream.js';

/**
 * The upstream hop of ordinary requests, on undici. Node's own HTTP client held the guard
 * at about half of what the same server side does with undici (bench/results/NOTES.md).
 * Fidelity lives in undici's low-level dispatch handler: raw header buffers in order, case
 * and repeats, the status text as sent, trailers, and backpressure through the return
 * value of `onData`. (Its newer handler API parses headers into an object first, so the
 * guard implements the raw one.) Upgrades and CONNECT stay on node:http (tunnel.ts): they
 * need a dedicated connection and the raw socket after coderd's 101, which node:http hands
 * over as is. `/reinit` streams get a connection of their own too, on node:http behind the
 * same callbacks ({@link dispatchOwnConnection}).
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

/** What a dispatch reports. */
export interface HopCallbacks {
  /** The final head. Return where its body goes, or null once the response was answered otherwise. */
  onHead(head: UpstreamHead, control: HopControl): ResponseSink | null;
  /** An interim 1xx response (103 Early Hints, 102 Processing). */
  onInformational?(head: UpstreamHead): void;
  /** No head came: coderd unreachable, reset before answering, or an answer undici refused. */
  onFailure(err: Error): void;
}

const latin1 = (b: Buffer | string) => (typeof b === 'string' ? b : b.toString('latin1'));

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
 * The client's body as undici reads it. undici destroys the body stream it was given once
 * it is done or failed; destroying the client's IncomingMessage would cut the client's
 * connection before its 502 or coderd's early answer is written. This stream only detaches.
 */
class RequestBody extends Readable {
  private readonly onData = (chunk: Buffer) => {
    if (!this.push(chunk)) this.req.pause();
  };
  private readonly onEnd = () => this.push(null);
  private readonly onAborted = () => this.destroy(Object.assign(new Error('the client left mid-body'), { code: 'CLIENT_ABORTED' }));

  constructor(private readonly req: IncomingMessage) {
    super({ highWaterMark: 64 * 1024 });
    req.on('data', this.onData).once('end', this.onEnd).once('aborted', this.onAborted).once('error', this.onAborted);
    req.pause();
  }

  override _read(): void {
    this.req.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.req.off('data', this.onData).off('end', this.onEnd).off('aborted', this.onAborted).off('error', this.onAborted);
    cb(err);
  }
}

/** One upstream request, as undici's (raw) dispatch handler. */
class Hop implements HopControl, Dispatcher.DispatchHandler {
  private abortRequest: ((err?: Error) => void) | null = null;
  private resumeBody: (() => void) | null = null;
  private sink: ResponseSink | null = null;
  private paused = false;
  private state: 'waiting' | 'streaming' | 'done' = 'waiting';

  constructor(private readonly callbacks: HopCallbacks) {}

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
    this.sink = this.callbacks.onHead(head, this);
    if (!this.sink) {
      // Answered otherwise (a head that cannot be relayed): coderd's body is not wanted.
      this.abort();
      return false;
    }
    return !this.paused;
  }

  onData(chunk: Buffer): boolean {
    if (!this.sink) return false;
    if (!this.sink.data(chunk)) this.paused = true;
    return !this.paused;
  }

  onComplete(trailers: string[] | Buffer[] | null): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.sink?.end(trailers ? (trailers as Array<Buffer | string>).map(latin1) : []);
  }

  onError(err: Error): void {
    const was = this.state;
    if (was === 'done') return;
    this.state = 'done';
    if (was === 'waiting') this.callbacks.onFailure(err);
    else this.sink?.broken(err);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.resumeBody?.();
  }

  abort(): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.abortRequest?.();
  }
}

/**
 * Sends one request to coderd on the upstream's keep-alive pool: the same method, target
 * (origin form) and headers (less hop-by-hop ones), the body streamed with the framing the
 * guard decided. Returns the control of the request; the callbacks report what came back.
 */
export function dispatch(upstream: Upstream, req: IncomingMessage, framing: Framing, callbacks: HopCallbacks): HopControl {
  const pairs = upstreamRequestHeaders(req.rawHeaders, {
    remoteAddress: req.socket.remoteAddress,
    encrypted: Boolean((req.socket as { encrypted?: boolean }).encrypted),
    upstreamHost: upstream.hostPort,
    forwarded: upstream.forwardedHeaders,
    upgrade: undefined,
    framing,
  });
  const hop = new Hop(callbacks);
  try {
    upstream.pool.dispatch(
      {
        path: originForm(req.url ?? '/'),
        method: req.method as Dispatcher.HttpMethod,
        headers: undiciHeaders(pairs),
        body: framing.kind === 'none' ? null : new RequestBody(req),
      },
      hop,
    );
  } catch (err) {
    // undici refused the request synchronously (a header it will not send).
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
 * than the pool. Ordinary requests stay on the pool.
 *
 * The same contract as {@link dispatch}: the callbacks see coderd's head as sent (raw
 * headers, status text), 1xx heads, the body with backpressure, trailers, and a clean end
 * or a break.
 */
export function dispatchOwnConnection(upstream: Upstream, req: IncomingMessage, framing: Framing, callbacks: HopCallbacks): HopControl {
  let upReq: ClientRequest;
  try {
    upReq = openUpstream(upstream, req, framing);
  } catch (err) {
    // node:http refused the request synchronously (a header it will not send), as undici may.
    callbacks.onFailure(err as Error);
    return { pause() {}, resume() {}, abort() {} };
  }
  return new NodeHop(upReq, req, framing, callbacks);
}

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
