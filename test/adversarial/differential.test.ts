import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingUpstream, type RecordingUpstream } from '../../testkit/recording-upstream.js';
import type { Proc } from '../../testkit/procs.js';
import type { TestGuard } from '../support/env.js';
import { CORPUS } from './corpus.js';
import { exchange, startAgainstNginx, type AgainstNginx, type Outcome } from './harness.js';

/**
 * The same raw requests go through the guard and through nginx (the reference proxy), each
 * in front of its own recording upstream that parses what arrives with Node's strict HTTP
 * parser. For every case: the guard never forwards more requests than its client got
 * answers for, every forwarded body is explicitly framed, and nothing unparseable reaches
 * coderd; and the guard's outcome equals nginx's unless the case names the difference.
 */
let guardUpstream: RecordingUpstream;
let nginxUpstream: RecordingUpstream;
let guard: TestGuard;
let nginx: { proc: Proc; port: number };

let pair: AgainstNginx | undefined;

beforeAll(async () => {
  [guardUpstream, nginxUpstream] = await Promise.all([startRecordingUpstream(), startRecordingUpstream()]);
  pair = await startAgainstNginx([guardUpstream, nginxUpstream], { REINIT_GUARD_HEADER_TIMEOUT: '2s' });
  ({ guard, nginx } = pair);
});

afterAll(async () => {
  await pair?.close();
});

/** Final answers (1xx are interim, except 101, which answers an upgrade). */
const answered = (o: Outcome) => o.statuses.filter((s) => s >= 200 || s === 101).length;

/** The outcome as compared across proxies: framing kind aside (nginx may re-frame a body). */
const comparable = (o: Outcome) => ({
  statuses: o.statuses,
  forwarded: o.forwarded.map((f) => ({ ...f, framing: f.framing === 'none' ? 'none' : 'framed' })),
});

describe.each(CORPUS)('$name', (c) => {
  let viaGuard: Outcome;
  let viaNginx: Outcome;
  beforeAll(async () => {
    [viaGuard, viaNginx] = await Promise.all([exchange(guard.guard.proxyAddress.port, c.bytes, guardUpstream), exchange(nginx.port, c.bytes, nginxUpstream)]);
  });

  it('never forwards more requests than it answered, and only framed bodies', () => {
    expect(viaGuard.forwarded.length).toBeLessThanOrEqual(answered(viaGuard));
    expect(viaGuard.parseErrors).toBe(0);
    for (const f of viaGuard.forwarded) if (f.kind === 'request' && f.bodyBytes > 0) expect(f.framing).not.toBe('none');
  });

  if (c.guard) {
    it(`answers ${JSON.stringify(c.guard)}`, () => expect(viaGuard.statuses).toEqual(c.guard));
  }

  it(c.differs ? `differs from nginx, as intended: ${c.differs}` : 'behaves as nginx does', () => {
    if (c.differs) expect(comparable(viaGuard)).not.toEqual(comparable(viaNginx));
    else expect(comparable(viaGuard)).toEqual(comparable(viaNginx));
  });
});
