import http from 'node:http';

/** What an agent-like client saw on `/reinit`. */
export interface ReinitResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  /** The exact body bytes received before the client stopped. */
  body: Buffer;
  /** ms from request to the response head, and to the last byte read. */
  headMs: number;
  totalMs: number;
  /** Why the client stopped reading. */
  stopped: 'data_event' | 'until' | 'timeout' | 'ended' | 'error';
}

export interface ReinitClientOptions {
  /** The `wait` query value; null leaves it out. */
  wait?: string | null;
  /** Stop once this returns true for the body so far (default: a complete data event). */
  until?: (body: string) => boolean;
  /** Give up reading after this many ms (default 5000). */
  timeoutMs?: number;
  /**
   * Resolve with `stopped: 'timeout'` when `timeoutMs` passes; by default a timeout rejects,
   * so a test can never mistake a hung stream for an answer.
   */
  allowTimeout?: boolean;
  /** Extra query string (appended as is). */
  extraQuery?: string;
  headers?: Record<string, string>;
}

/** True once the body holds a complete `event: data` event, as the agent's reader waits for. */
export const hasDataEvent = (body: string) => /(^|\n)event: data\ndata: [^\n]*\n\n/.test(body);

/**
 * Connects like a Coder agent: `GET /api/v2/workspaceagents/me/reinit?wait=true` with the
 * agent token in `Coder-Session-Token`, reads until the first data event (or a stop
 * condition), then closes the connection, as the agent does.
 */
export function connectReinit(baseUrl: string, token: string, opts: ReinitClientOptions = {}): Promise<ReinitResult> {
  const wait = opts.wait === undefined ? 'true' : opts.wait;
  const query = [wait === null ? '' : `wait=${wait}`, opts.extraQuery ?? ''].filter(Boolean).join('&');
  const url = new URL(`/api/v2/workspaceagents/me/reinit${query ? `?${query}` : ''}`, baseUrl);
  const until = opts.until ?? hasDataEvent;
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { 'Coder-Session-Token': token, ...opts.headers }, agent: false });
    req.once('error', reject);
    req.once('response', (res) => {
      const headMs = performance.now() - started;
      const chunks: Buffer[] = [];
      let done = false;
      const finish = (stopped: ReinitResult['stopped']) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body: Buffer.concat(chunks),
          headMs,
          totalMs: performance.now() - started,
          stopped,
        });
        req.destroy();
      };
      const timer = setTimeout(() => {
        if (opts.allowTimeout) return finish('timeout');
        done = true;
        req.destroy();
        reject(new Error(`no end of the /reinit stream within ${opts.timeoutMs ?? 5000}ms; got ${Buffer.concat(chunks).length} bytes`));
      }, opts.timeoutMs ?? 5000);
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        if (until(Buffer.concat(chunks).toString('utf8'))) finish(opts.until ? 'until' : 'data_event');
      });
      res.once('end', () => finish('ended'));
      res.once('error', () => finish('error'));
    });
  });
}

/**
 * Whether the agent received coderd's seeded claim for `workspaceId`, whole: the stream
 * stopped at a complete data event carrying it (a fail-open must deliver the event, not just
 * a 200).
 */
export const receivedClaim = (r: ReinitResult, workspaceId: string): boolean =>
  r.status === 200 && r.stopped === 'data_event' && r.body.toString().includes(`"workspace_id":"${workspaceId}","reason":"prebuild_claimed"`);
