import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { headerNameMatcher, upstreamRequestHeaders, type Framing, type HeaderPair } from './headers.js';
import { originForm } from './target.js';
import type { Upstream } from './upstream.js';

/**
 * The upstream hop of ordinary requests, on undici. Node's own HTTP client held the guard
 * at about half of what the same server side does with undici (bench/results/NOTES.md).
 * Fidelity lives in undici's low-level dispatch handler: raw header buffers in order, case
 * and repeats, the status text as sent, trailers, and backpressure through the return
 * value of `onData`. (Its newer handler API parses headers into an object first, so the
 * guard implements the raw one.) Upgrades and CONNECT stay on node:http (tunnel.ts): they
 * need a dedicated connection and the raw socket after coderd's 101, which node:http hands
 * over as is.
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
