import type { IncomingMessage } from 'node:http';

/** How coderd's response body has ended so far. */
export type StreamState = 'open' | 'ended' | 'broken';

/**
 * coderd's `/reinit` response body with its life recorded as state. Its listeners are
 * attached the moment the response arrives and never removed, so nothing coderd does while
 * the guard reads the first event or waits for a verdict can be missed: the bytes are
 * buffered, and "ended" (a clean end) or "broken" (reset, closed mid-body) is state that
 * the next step reads, not an event that it must catch in time.
 *
 * Until a sink is set the bytes accumulate (reading pauses past `maxBuffered`); once
 * `drain` sets one, the buffer is handed over and later bytes flow straight to it with
 * backpressure.
 */
export class UpstreamStream {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private sink: Sink | null = null;
  private waiters: Array<() => void> = [];
  state: StreamState = 'open';

  constructor(
    readonly res: IncomingMessage,
    private readonly maxBuffered: number,
  ) {
    res.on('data', (chunk: Buffer) => {
      if (this.sink) {
        if (!this.sink.write(chunk)) res.pause();
        return;
      }
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered > maxBuffered) res.pause();
      this.wake();
    });
    res.once('end', () => this.finish('ended'));
    // 'close' without 'end': coderd went away mid-body (a reset, or a FIN before the end of
    // a chunked body).
    res.once('close', () => this.finish(res.complete ? 'ended' : 'broken'));
    res.on('error', () => {}); // The state says it; 'close' follows.
  }

  /** The bytes read and not yet handed to a sink. */
  get bytes(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** Resolves on the next change: more bytes, an end, a break, or after `ms`. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
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
    if (pending.length && !sink.write(pending)) this.res.pause();
    else this.res.resume();
    sink.onDrain?.(() => this.res.resume());
    if (this.state !== 'open') sink.end(this.state);
  }

  /** Stops reading and releases coderd's side. */
  destroy(): void {
    this.sink = null;
    this.res.destroy();
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
