import { describe, expect, it } from 'vitest';
import { asReinitEvent, readFirstEvent } from './sse.js';

const WS = '0b6d0a4e-54f5-4f7e-9d5c-3c1d2a9e8f70';
const claim = `{"workspace_id":"${WS}","reason":"prebuild_claimed","owner_id":"6d7c1f0e-3c5e-4b53-9a1b-0f2f4f8a9c11"}`;
const b = (s: string) => Buffer.from(s);

describe('readFirstEvent', () => {
  it.each([
    ['ping', 'event: ping\n\n', { end: 13, type: 'ping', data: null }],
    ['data', `event: data\ndata: ${claim}\n\n`, { end: 20 + claim.length, type: 'data', data: claim }],
    ['data then more', `event: data\ndata: x\n\nevent: ping\n\n`, { end: 21, type: 'data', data: 'x' }],
    ['CRLF', 'event: ping\r\n\r\n', { end: 15, type: 'ping', data: null }],
    ['CR only (known once the next byte is not LF)', 'event: ping\r\revent', { end: 13, type: 'ping', data: null }],
    ['no space after colon', 'event:data\ndata:x\n\n', { end: 19, type: 'data', data: 'x' }],
    ['multi-line data', 'event: data\ndata: a\ndata: b\n\n', { end: 29, type: 'data', data: 'a\nb' }],
    ['comment and id lines', ': hi\nid: 1\nevent: error\ndata: e\n\n', { end: 33, type: 'error', data: 'e' }],
    ['leading blank lines', '\n\nevent: ping\n\n', { end: 15, type: 'ping', data: null }],
    ['no event field', 'data: x\n\n', { end: 9, type: 'message', data: 'x' }],
    // Decided from the SSE spec and the agent's reader (issue #11):
    ['a comment-only block dispatches nothing: the next block is the first event', ': keepalive\n\nevent: ping\n\n', { end: 26, type: 'ping', data: null }],
    ['id and retry alone dispatch nothing', 'id: 1\nretry: 5\n\nevent: data\ndata: x\n\n', { end: 37, type: 'data', data: 'x' }],
    ['a leading BOM is skipped', '\ufeffevent: ping\n\n', { end: 16, type: 'ping', data: null }],
    ['a CR at the very end ends its line at once (CR-only framing)', 'event: ping\r\r', { end: 13, type: 'ping', data: null }],
    ['a CR at the very end after CRLF ends the blank line at once', 'event: ping\r\n\r', { end: 14, type: 'ping', data: null }],
  ])('%s', (_n, input, expected) => {
    expect(readFirstEvent(b(input))).toEqual(expected);
  });

  it.each([
    ['empty', ''],
    ['half a line', 'event: da'],
    ['one line', 'event: data\n'],
    ['no blank line yet', `event: data\ndata: ${claim}\n`],
    ['only a comment block', ': keepalive\n\n'],
    ['only a BOM', '\ufeff'],
  ])('needs more bytes: %s', (_n, input) => {
    expect(readFirstEvent(b(input))).toBeNull();
  });

  it.each([
    ['LF', `event: data\ndata: ${claim}\n\nevent: ping\n\n`],
    ['CRLF', `event: data\r\ndata: ${claim}\r\n\r\nevent: ping\r\n\r\n`],
    ['CR', `event: data\rdata: ${claim}\r\revent: ping\r\r`],
  ])('finds the same event however %s-framed bytes are split, and finds it as soon as it is complete', (_n, text) => {
    const whole = b(text);
    const expected = readFirstEvent(whole);
    expect(expected).toMatchObject({ type: 'data', data: claim });
    for (let cut = 1; cut <= whole.length; cut++) {
      const head = readFirstEvent(whole.subarray(0, cut));
      if (cut >= expected!.end) {
        // Every byte of the event is here: it must be found (a CRLF's LF may still be due).
        expect(head, `cut at ${cut}`).not.toBeNull();
      }
      if (head) {
        expect(head.type).toBe(expected!.type);
        expect(head.data).toBe(expected!.data);
        expect([expected!.end, expected!.end - 1]).toContain(head.end);
        expect(head.end).toBeLessThanOrEqual(cut);
      }
    }
  });

  it('reads from a subarray view at its own offset', () => {
    const big = b(`xxxxevent: ping\n\n`).subarray(4);
    expect(readFirstEvent(big)).toEqual({ end: 13, type: 'ping', data: null });
  });
});

describe('asReinitEvent', () => {
  const ev = (type: string, data: string | null) => ({ end: 0, type, data });
  it.each([
    ['a claim', ev('data', claim), { workspace_id: WS, reason: 'prebuild_claimed', owner_id: '6d7c1f0e-3c5e-4b53-9a1b-0f2f4f8a9c11' }],
    ['a claim without owner', ev('data', `{"workspace_id":"${WS}","reason":"prebuild_claimed"}`), { workspace_id: WS, reason: 'prebuild_claimed' }],
    ['unknown fields kept', ev('data', `{"workspace_id":"${WS}","reason":"other","x":1}`), { workspace_id: WS, reason: 'other', x: 1 }],
    ['a ping', ev('ping', null), null],
    ['an error event', ev('error', '{"message":"x"}'), null],
    ['not JSON', ev('data', '{nope'), null],
    ['JSON array', ev('data', '[]'), null],
    ['no workspace id', ev('data', '{"reason":"prebuild_claimed"}'), null],
    ['workspace id not a uuid', ev('data', '{"workspace_id":"1; drop","reason":"prebuild_claimed"}'), null],
    ['reason not a string', ev('data', `{"workspace_id":"${WS}","reason":1}`), null],
  ])('%s', (_n, input, expected) => {
    expect(asReinitEvent(input)).toEqual(expected);
  });
});
