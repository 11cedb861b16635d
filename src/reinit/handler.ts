import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { ReinitOutcome } from '../observability/metrics.js';
import { writeCoderError, type CoderError } from '../proxy/errors.js';
import { cutConnection, endResponse, failRequest, forward, relay, writeUpstreamHead, type ForwardDeps, type ResponseHandler } from '../proxy/forward.js';
import type { UpstreamHead } from '../proxy/hop.js';
import type { Decider, Decision } from './decider.js';
import { peekFirstEvent } from './peek.js';
import { asReinitEvent, PREBUILD_CLAIMED } from './sse.js';
import { UpstreamStream } from './upstream-stream.js';

/** What the `/reinit` handler needs. */
export interface ReinitDeps extends ForwardDeps {
  mode: 'enforce' | 'observe';
  decider: Decider;
  peekTimeoutMs: number;
  peekMaxBytes: number;
  /** How long a held stream is kept before it is ended so the agent asks again. */
  holdMaxMs: number;
  /** How often a held stream asks (uncached) whether the claim build exists yet. */
  holdRecheckMs: number;
}

/**
 * The body a patched coderd (2.35.1, coderd/workspaceagents.go) answers once the claim build
 * is no longer the latest build: its words, written as coderd's `httpapi.Write` writes them
 * (compact JSON, HTML escaped, then a newline), byte for byte.
 */
export const CLAIM_HANDLED_BODY = `${JSON.stringify({
  message: 'Workspace is not a prebuilt workspace waiting to be claimed.',
  detail: 'The prebuild claim for this workspace has already been handled by an earlier build.',
})}\n`;

/** The response header that shows the guard answered, not coderd (coderd's words are kept). */
export const GUARD_HEADER = 'X-Coder-Reinit-Guard';

/** coderd's SSE headers that do not belong on a JSON answer; the rest of its head is kept. */
const SSE_ONLY = new Set(['content-type', 'cache-control', 'connection', 'x-accel-buffering', 'content-length', 'transfer-encoding', 'keep-alive']);

/** The guard's 409 body length, computed once. */
const CLAIM_HANDLED_LENGTH = String(Buffer.byteLength(CLAIM_HANDLED_BODY));

/**
 * Answers 409 as a patched coderd does: its status, body and content type, with the headers
 * coderd's middleware set on this very request (Coder-Build-Version, X-Content-Type-Options,
 * Date, ...), plus {@link GUARD_HEADER}; in the order Go's server writes a head: the
 * handler's headers sorted by name (values of one name in order), then Date, then
 * Content-Length (found against the real coderd, fidelity/).
 */
function writeClaimHandled(head: UpstreamHead, res: ServerResponse): void {
  const pairs: Array<[string, string]> = [
    ['Content-Type', 'application/json; charset=utf-8'],
    [GUARD_HEADER, 'claim-already-handled'],
  ];
  let date: string | undefined;
  for (let i = 0; i < head.rawHeaders.length; i += 2) {
    const name = head.rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (lower === 'date') date ??= head.rawHeaders[i + 1] as string;
    else if (!SSE_ONLY.has(lower)) pairs.push([name, head.rawHeaders[i + 1] as string]);
  }
  // A stable sort: several values of one name keep coderd's order.
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const headers: string[] = [];
  for (const [k, v] of pairs) headers.push(k, v);
  if (date !== undefined) headers.push('Date', date);
  headers.push('Content-Length', CLAIM_HANDLED_LENGTH);
  res.sendDate = false;
  res.writeHead(409, headers);
  res.end(CLAIM_HANDLED_BODY);
}

/** A 200 whose Content-Type is text/event-stream: coderd streaming the reinit events. */
function isEventStream(head: UpstreamHead): boolean {
  if (head.statusCode !== 200) return false;
  for (let i = 0; i < head.rawHeaders.length; i += 2) {
    if ((head.rawHeaders[i] as string).toLowerCase() === 'content-type') return /^text\/event-stream\b/i.test(head.rawHeaders[i + 1] as string);
  }
  return false;
}

/**
 * Handles `GET /api/v2/workspaceagents/me/reinit?wait=true`: forwards it unchanged, reads
 * coderd's first SSE event before the agent sees anything, and, when that event is a
 * seeded `prebuild_claimed` for a workspace whose latest build is not the claim build,
 * answers 409 as a patched coderd would. Whatever cannot be decided passes unchanged.
 */
export function createReinitHandler(deps: ReinitDeps) {
  const { log, metrics } = deps;

  const count = (labels: { outcome: ReinitOutcome; reason: string }) => metrics.reinitRequests.inc(labels);

  /**
   * coderd's answer to an inspected /reinit: anything but a 200 event stream is relayed
   * verbatim; an event stream is read into an UpstreamStream (the hop's sink from now on)
   * and judged in the background.
   */
  const onResponse: ResponseHandler = (head, res, hop) => {
    if (!isEventStream(head)) {
      count({ outcome: 'upstream_status', reason: String(head.statusCode) });
      return relay(deps)(head, res, hop);
    }
    metrics.openStreams.inc({ kind: 'reinit' });
    res.once('close', () => metrics.openStreams.dec({ kind: 'reinit' }));
    const stream = new UpstreamStream(head, deps.peekMaxBytes, hop);
    judge(stream, res).catch((err: unknown) => {
      stream.destroy();
      failRequest(deps, 'reinit', res.req, res, err);
    });
    return stream;
  };

  /** Reads the first event, decides, and answers: pass, hold or 409. */
  const judge = async (stream: UpstreamStream, res: ServerResponse) => {
    const peeked = await peekFirstEvent(stream, deps.peekMaxBytes, deps.peekTimeoutMs);
    if (res.destroyed) return stream.destroy(); // The agent left while we read.
    if (peeked.end !== 'event' || !peeked.event) return failOpen(stream, res, `peek_${peeked.end}`);

    const event = asReinitEvent(peeked.event);
    if (!event || event.reason !== PREBUILD_CLAIMED) {
      count({ outcome: 'passed', reason: event ? 'other_reason' : 'no_seeded_event' });
      log.debug('reinit stream passed', { first_event: peeked.event.type });
      return relayStream(deps, stream, res);
    }

    const id = event.workspace_id;
    if (deps.mode === 'observe') {
      // Observe never delays or alters the stream: decide beside it.
      relayStream(deps, stream, res);
      void timedDecide(id).then((d) => record(d, id, 'observe'));
      return;
    }

    const decision = await timedDecide(id);
    if (res.destroyed) return stream.destroy();
    const action = record(decision, id, 'enforce');
    if (action === 'suppress') {
      stream.destroy(); // Close coderd's stream: it must not deliver the event later.
      writeClaimHandled(stream.head, res);
    } else if (action === 'hold') {
      // The claim build does not exist yet: a patched coderd waits on pubsub and sends the
      // claim when the claim build completes, but the unpatched one dropped its
      // subscription when it seeded, so this stream can never carry the claim. Keep it
      // (coderd's pings pass) and ask the database, uncached, every holdRecheckMs; once the
      // claim build exists (or anything else changed), end it cleanly: the agent reconnects
      // (after 100 ms) and coderd judges it afresh, as a patched coderd judges a
      // reconnecting agent. holdMaxMs bounds the hold if the database cannot tell.
      stream.discard(peeked.event.end);
      const release = relayStream(deps, stream, res, { lazyHead: true, endAfterMs: deps.holdMaxMs });
      recheckHold(id, res, release);
    } else {
      relayStream(deps, stream, res);
    }
  };

  /** Polls a held stream's workspace until its verdict is no longer `hold`, then releases the stream. */
  const recheckHold = (id: string, res: ServerResponse, release: () => void) => {
    let timer: NodeJS.Timeout | undefined;
    let warned = false;
    const tick = async () => {
      const d = await deps.decider.decide(id, { fresh: true });
      if (res.writableEnded || res.destroyed) return;
      if (d.ok && d.verdict.action !== 'hold') {
        metrics.holdsReleased.inc({ reason: d.verdict.reason });
        log.info('held reinit stream released', { workspace_id: id, reason: d.verdict.reason });
        return release();
      }
      if (!d.ok) {
        // A failed recheck keeps the hold (holdMaxMs still ends it, and the agent is judged
        // afresh when it reconnects). Counted every time, logged once per held stream.
        metrics.dbErrors.inc({ kind: d.failure });
        metrics.holdRecheckFailures.inc({ kind: d.failure });
        if (!warned) log.warn('held reinit stream recheck failed', { workspace_id: id, reason: `db_${d.failure}`, detail: d.detail, effect: `the stream stays held; it ends within ${deps.holdMaxMs}ms at most` });
        warned = true;
      }
      timer = setTimeout(() => void tick(), deps.holdRecheckMs);
    };
    timer = setTimeout(() => void tick(), deps.holdRecheckMs);
    res.once('close', () => clearTimeout(timer));
  };

  const timedDecide = async (id: string): Promise<Decision> => {
    const start = performance.now();
    const d = await deps.decider.decide(id);
    metrics.decisionSeconds.observe({ source: d.ok ? d.source : 'failed' }, (performance.now() - start) / 1000);
    return d;
  };

  /** Logs and counts a decision; returns what enforce mode does with the stream. */
  const record = (d: Decision, id: string, mode: 'enforce' | 'observe'): 'pass' | 'suppress' | 'hold' => {
    if (!d.ok) {
      metrics.dbErrors.inc({ kind: d.failure });
      count({ outcome: 'failed_open', reason: `db_${d.failure}` });
      log.warn('reinit decision failed open', { workspace_id: id, outcome: 'failed_open', reason: `db_${d.failure}`, detail: d.detail, mode });
      return 'pass';
    }
    const { verdict } = d;
    const outcome: ReinitOutcome =
      verdict.action === 'suppress' ? (mode === 'enforce' ? 'suppressed' : 'would_suppress')
      : verdict.action === 'hold' ? (mode === 'enforce' ? 'held' : 'would_hold')
      : verdict.action === 'pass' ? 'passed'
      : 'failed_open';
    count({ outcome, reason: verdict.reason });
    const fields = { workspace_id: id, outcome, reason: verdict.reason, source: d.source, mode };
    if (outcome === 'failed_open') log.warn('reinit decision failed open', fields);
    else log.info('reinit decision', fields);
    return verdict.action === 'suppress' || verdict.action === 'hold' ? verdict.action : 'pass';
  };

  const failOpen = (stream: UpstreamStream, res: ServerResponse, reason: string) => {
    count({ outcome: 'failed_open', reason });
    log.warn('reinit stream passed without a decision', { outcome: 'failed_open', reason, bytes: stream.bytes.length });
    relayStream(deps, stream, res);
  };

  // A stream coderd may hold for hours, or one the guard cuts after its first event: on a
  // connection of its own, not the keep-alive pool (forward.ts, hop.ts).
  return (req: IncomingMessage, res: ServerResponse) => forward(deps, req, res, onResponse, { ownConnection: true });
}

/**
 * Relays coderd's stream from where the guard stands: coderd's head, the bytes read and
 * kept, then the rest as it comes, ending the agent's stream the way coderd ended it (a
 * clean end, with trailers; or a cut connection). With `lazyHead` (a held stream: the
 * seeded event was dropped) nothing, not even the head, is sent until coderd writes again
 * or ends, as coderd itself sends nothing before its first write. `endAfterMs` ends the
 * stream cleanly (and releases coderd's) after that long. Returns that same clean end,
 * for the caller to end it earlier.
 */
function relayStream(deps: ForwardDeps, stream: UpstreamStream, res: ServerResponse, opts: { lazyHead?: boolean; endAfterMs?: number } = {}): () => void {
  let head: { trailers: boolean } | null = null;
  const start = (): boolean => {
    head ??= writeUpstreamHead(deps, stream.head, res);
    if (!head) stream.destroy();
    return head !== null;
  };
  const endCleanly = () => {
    if (res.writableEnded || res.destroyed) return;
    stream.destroy();
    if (start()) res.end();
  };
  if (!opts.lazyHead && !start()) return endCleanly;
  if (opts.endAfterMs !== undefined) {
    const timer = setTimeout(endCleanly, opts.endAfterMs);
    timer.unref();
    res.once('close', () => clearTimeout(timer));
  }
  stream.drain({
    write: (chunk) => (start() ? res.write(chunk) : true),
    onDrain: (resume) => res.on('drain', resume),
    end: (state) => {
      if (state === 'broken') return head ? cutConnection(res) : res.destroy();
      if (start()) endResponse(res, stream.rawTrailers, (head as { trailers: boolean }).trailers);
    },
  });
  return endCleanly;
}
