import type { HopControl, ResponseSink, UpstreamHead } from '../proxy/hop.js';

/** How coderd's response body has ended so far. */
export type StreamState = 'open' | 'ended' | 'broken';

/**
 * coderd's `/reinit` response body with its life recorded as state. It is the upstream
 * hop's sink from the moment the head arrives, so nothing coderd does while the guard reads
 * the first event or waits for a verdict can be missed: the bytes are buffered, and "ended"
 * (a clean end) or "broken" (reset, closed mid-body) is state that the next step reads, not
 * an event that it must catch in time.
 *
 * Until a sink is set the bytes accumulate (reading pauses past `maxBuffered`); once
 * `drain` sets one, the buffer is handed over and later bytes flow straight to it with
 * backpressure.
 */
export class UpstreamStream implements ResponseSink {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private sink: Sink | null = null;
  private destroyed = false;
  private waiters: Array<() => void> = [];
  state: StreamState = 'open';
  /** coderd's trailers, once it ended. */
  rawTrailers: string[] = [];

  constructor(
    readonly head: UpstreamHead,
    private readonly maxBuffered: number,
    private readonly hop: HopControl,
  ) {}

  /** From the hop: one chunk of coderd's body. */
  data(chunk: Buffer): boolean {
    if (this.sink) return this.sink.write(chunk);
    if (this.destroyed) return false;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.wake();
    return this.buffered <= this.maxBuffered;
  }

  /** From the hop: coderd ended its body cleanly. */
  end(rawTrailers: string[]): void {
    this.rawTrailers = rawTrailers;
    this.finish('ended');
  }

  /** From the hop: coderd broke off mid-body. */
  broken(): void {
    this.finish('broken');
  }

  /** The bytes read and not yet handed to a sink. */
  get bytes(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /**
   * Resolves on the next change: more bytes, an end, a break, or after `ms`. When the time
   * is up, bytes already in the socket are read first (setImmediate runs after the event
   * loop's next poll): a loop kept busy past `ms` by a storm is the guard's own delay, not
   * coderd's, and must not end a peek that coderd answered in time.
   */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => setImmediate(done), ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.waiters.push(done);
    });
  }

  /** Forgets the first `n` buffered bytes (an event the guard drops). */
  discard(n: number): void {
    const rest = this.bytes.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
  }

  /**
   * Hands the buffered bytes, then everything after, to `sink`; tells it once the stream
   * ended or broke (at once if that already happened). Reading resumes.
   */
  drain(sink: Sink): void {
    const pending = this.bytes;
    this.chunks = [];
    this.buffered = 0;
    this.sink = sink;
    sink.onDrain?.(() => this.hop.resume());
    if (pending.length && !sink.write(pending)) this.hop.pause();
    else this.hop.resume();
    if (this.state !== 'open') sink.end(this.state);
  }

  /**
   * Stops reading and releases coderd's side. The release (closing coderd's connection)
   * runs once the caller's synchronous work is done, still before any other event: the
   * guard's 409, written right after this call, leaves first. Closing a loopback or LAN
   * connection does coderd's side of the close inline and wakes coderd; in front of the
   * 409 it added ~0.1 ms to its median and up to ~0.5 ms to its p99.
   */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.sink = null;
    queueMicrotask(() => this.hop.abort());
  }

  private finish(state: Exclude<StreamState, 'open'>): void {
    if (this.state !== 'open') return;
    this.state = state;
    this.wake();
    this.sink?.end(state);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/** Where the body goes once the guard has decided. */
export interface Sink {
  /** Returns false to ask for a pause (backpressure). */
  write(chunk: Buffer): boolean;
  /** Registers the resume callback for backpressure. */
  onDrain?(resume: () => void): void;
  /** The stream ended cleanly or broke: end the agent's stream the same way. */
  end(state: Exclude<StreamState, 'open'>): void;
}
