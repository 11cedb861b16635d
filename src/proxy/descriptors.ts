/**
 * Waiting for a file descriptor. In a reconnect storm each connected agent holds two sockets
 * (its own and the guard's to coderd), and at the process's open-files limit opening coderd's
 * connection fails with EMFILE before anything was sent. That is the guard's own queueing,
 * never a reason to answer 502: descriptors come free as other streams end, so a request that
 * sent nothing yet waits and is sent again.
 */

/** The process's own descriptor limits (per process, system-wide). */
const OUT_OF_DESCRIPTORS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE']);

/** Whether an error says the process had no descriptor for a new connection. */
export const outOfDescriptors = (err: unknown): boolean => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && OUT_OF_DESCRIPTORS.has(code);
};

/**
 * The waits of one request: 10 ms, doubling to 500 ms, for at most `limitMs` counted from the
 * first (the upstream connect deadline: a request never waits longer than connecting may
 * take). The clock is read only once a request starts waiting, never on the hot path.
 */
export class DescriptorWait {
  private waits = 0;
  private since = 0;

  constructor(private readonly limitMs: number) {}

  /** How long to wait before the next try, or null once the deadline has passed. */
  next(): number | null {
    if (this.waits === 0) this.since = performance.now();
    else if (performance.now() - this.since >= this.limitMs) return null;
    return Math.min(500, 10 * 2 ** this.waits++);
  }

  /** Whether this is the first wait (for a log line once per request). */
  get first(): boolean {
    return this.waits === 1;
  }
}
