import type { IncomingMessage, ServerResponse } from 'node:http';
import { logPath } from '../proxy/target.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';

/**
 * What the guard saw of one proxied request, recorded when its response closes: the
 * pass-through metrics (requests by method and status class and by who answered, latency,
 * bytes) and, when switched on, one JSON access-log line. Nothing of a request's headers,
 * cookies or query values is kept: the path is logged without its query string.
 */

/** Marks a response whose head is coderd's (relayed); anything else the guard answered itself. */
const FROM_CODERD = Symbol('fromCoderd');
/** When coderd's head arrived, for the access log's upstream time. */
const UPSTREAM_AT = Symbol('upstreamAt');

type Marked = ServerResponse & { [FROM_CODERD]?: true; [UPSTREAM_AT]?: number };

/** A client connection's byte counts already attributed to earlier requests on it. */
const COUNTED_IN = Symbol('countedIn');
const COUNTED_OUT = Symbol('countedOut');
type CountedSocket = IncomingMessage['socket'] & { [COUNTED_IN]?: number; [COUNTED_OUT]?: number };

/** Notes that this response's head is coderd's own (forward.ts, on relaying it). */
export function markFromCoderd(res: ServerResponse): void {
  (res as Marked)[FROM_CODERD] = true;
  (res as Marked)[UPSTREAM_AT] = performance.now();
}

/** Methods as metric labels: a bounded set, whatever a client sends. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
const CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'];

/** Options of {@link createTrafficObserver}. */
export interface TrafficOptions {
  metrics: Metrics;
  log: Logger;
  /** One JSON line per request (REINIT_GUARD_ACCESS_LOG). */
  accessLog: boolean;
}

/**
 * Returns the per-request hook of the proxy listener: call it first for every request.
 * Cost on the hot path: one `close` listener and a few counter updates.
 */
export function createTrafficObserver(opts: TrafficOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { metrics, log, accessLog } = opts;
  return (req, res) => {
    const started = performance.now();
    const socket = req.socket as CountedSocket;
    res.once('close', () => {
      const seconds = (performance.now() - started) / 1000;
      const method = METHODS.has(req.method ?? '') ? (req.method as string) : 'other';
      // A response never started (the client left first) has no status class of its own.
      const code = res.headersSent ? (CLASSES[Math.floor(res.statusCode / 100) - 1] ?? 'other') : 'none';
      const origin = (res as Marked)[FROM_CODERD] ? 'coderd' : 'guard';
      // What the connection read and wrote since the previous request on it ended: this
      // request's head and body (its head and body may arrive in the very read that emitted
      // it, so a count taken at its start would miss them).
      const bytesIn = Math.max(0, socket.bytesRead - (socket[COUNTED_IN] ?? 0));
      const bytesOut = Math.max(0, socket.bytesWritten - (socket[COUNTED_OUT] ?? 0));
      socket[COUNTED_IN] = socket.bytesRead;
      socket[COUNTED_OUT] = socket.bytesWritten;
      metrics.httpRequests.inc({ method, code, origin });
      metrics.httpDuration.observe({ origin }, seconds);
      metrics.httpBytes.inc({ direction: 'in' }, bytesIn);
      metrics.httpBytes.inc({ direction: 'out' }, bytesOut);
      if (accessLog) {
        const upstreamAt = (res as Marked)[UPSTREAM_AT];
        log.info('request', {
          method: req.method ?? '',
          path: logPath(req.url),
          status: res.headersSent ? res.statusCode : null,
          origin,
          duration_ms: Math.round(seconds * 10_000) / 10,
          upstream_ms: upstreamAt === undefined ? null : Math.round((upstreamAt - started) * 10) / 10,
          bytes_in: bytesIn,
          bytes_out: bytesOut,
          completed: res.writableFinished,
        });
      }
    });
  };
}
