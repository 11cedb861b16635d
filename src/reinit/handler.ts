import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { ReinitOutcome } from '../observability/metrics.js';
import { writeCoderError, type CoderError } from '../proxy/errors.js';
import { forward, relayResponse, streamBody, writeUpstreamHead, type ForwardDeps } from '../proxy/forward.js';
import type { Decider, Decision } from './decider.js';
import { peekFirstEvent, type Peeked } from './peek.js';
import { asReinitEvent, PREBUILD_CLAIMED } from './sse.js';

/** What the `/reinit` handler needs. */
export interface ReinitDeps extends ForwardDeps {
  mode: 'enforce' | 'observe';
  decider: Decider;
  peekTimeoutMs: number;
  peekMaxBytes: number;
}

/** The 409 a patched coderd gives once the claim build is no longer the latest build. */
export function claimHandledError(workspaceId: string): CoderError {
  return {
    message: 'Prebuilt workspace claim was already handled.',
    detail: `The latest build of workspace ${workspaceId} is not its prebuild claim build, so this agent does not need to reinitialize. (coder-reinit-guard answered for coderd.)`,
  };
}

const isEventStream = (upRes: IncomingMessage) =>
  upRes.statusCode === 200 && /^text\/event-stream\b/i.test(upRes.headers['content-type'] ?? '');

/**
 * Handles `GET /api/v2/workspaceagents/me/reinit?wait=true`: forwards it unchanged, reads
 * coderd's first SSE event before the agent sees anything, and, when that event is a
 * seeded `prebuild_claimed` for a workspace whose latest build is not the claim build,
 * answers 409 as a patched coderd would. Whatever cannot be decided passes unchanged.
 */
export function createReinitHandler(deps: ReinitDeps) {
  const { log, metrics } = deps;

  const count = (labels: { outcome: ReinitOutcome; reason: string }) => metrics.reinitRequests.inc(labels);

  const onResponse = async (upRes: IncomingMessage, res: ServerResponse, upReq: ClientRequest) => {
    if (!isEventStream(upRes)) {
      count({ outcome: 'upstream_status', reason: String(upRes.statusCode) });
      relayResponse(upRes, res);
      return;
    }
    metrics.openStreams.inc({ kind: 'reinit' });
    res.once('close', () => metrics.openStreams.dec({ kind: 'reinit' }));

    const peeked = await peekFirstEvent(upRes, deps.peekMaxBytes, deps.peekTimeoutMs);
    if (res.destroyed) return; // The agent left while we read; upReq is already released.
    if (peeked.end !== 'event' || !peeked.event) return failOpen(upRes, res, peeked, `peek_${peeked.end}`);

    const event = asReinitEvent(peeked.event);
    if (!event || event.reason !== PREBUILD_CLAIMED) {
      count({ outcome: 'passed', reason: event ? 'other_reason' : 'no_seeded_event' });
      log.debug('reinit stream passed', { first_event: peeked.event.type });
      return passPeeked(upRes, res, peeked);
    }

    const id = event.workspace_id;
    if (deps.mode === 'observe') {
      // Observe never delays or alters the stream: decide beside it.
      passPeeked(upRes, res, peeked);
      void timedDecide(id).then((d) => record(d, id, 'observe'));
      return;
    }

    const decision = await timedDecide(id);
    if (res.destroyed) return;
    const action = record(decision, id, 'enforce');
    if (action === 'suppress') {
      upReq.destroy(); // Close coderd's stream: it must not deliver the event later.
      upRes.destroy();
      writeCoderError(res, 409, claimHandledError(id));
    } else if (action === 'hold') {
      holdStream(upRes, res, peeked.bytes.subarray(peeked.event.end));
    } else {
      passPeeked(upRes, res, peeked);
    }
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

  const failOpen = (upRes: IncomingMessage, res: ServerResponse, peeked: Peeked, reason: string) => {
    count({ outcome: 'failed_open', reason });
    log.warn('reinit stream passed without a decision', { outcome: 'failed_open', reason, bytes: peeked.bytes.length });
    passPeeked(upRes, res, peeked);
  };

  return (req: IncomingMessage, res: ServerResponse) => forward(deps, req, res, (upRes, r, upReq) => void onResponse(upRes, r, upReq));
}

/** Sends coderd's head and the exact bytes already read, then the rest of the stream. */
function passPeeked(upRes: IncomingMessage, res: ServerResponse, peeked: Peeked): void {
  if (peeked.end === 'ended') {
    writeUpstreamHead(upRes, res);
    res.end(peeked.bytes);
  } else if (peeked.end === 'error') {
    // coderd's stream broke while we read it: the agent sees the same break.
    writeUpstreamHead(upRes, res);
    res.write(peeked.bytes);
    res.destroy();
  } else {
    relayResponse(upRes, res, peeked.bytes);
  }
}

/**
 * Drops the seeded event and keeps the stream, as a fixed coderd waits on pubsub while
 * the claim build does not exist yet. Like coderd, nothing (not even the head) is sent
 * until the next write.
 */
function holdStream(upRes: IncomingMessage, res: ServerResponse, rest: Buffer): void {
  if (rest.length) {
    relayResponse(upRes, res, rest);
    return;
  }
  const start = (chunk?: Buffer) => {
    upRes.off('end', onEnd);
    writeUpstreamHead(upRes, res);
    if (chunk) {
      res.write(chunk);
      streamBody(upRes, res);
    } else res.end();
  };
  const onEnd = () => start();
  upRes.once('data', (chunk: Buffer) => {
    upRes.pause();
    start(chunk);
  });
  upRes.once('end', onEnd);
  upRes.once('close', () => {
    if (!res.headersSent) res.destroy();
  });
  upRes.resume(); // The peek paused it; a 'data' listener alone does not restart a paused stream.
}
