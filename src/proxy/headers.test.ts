import { describe, expect, it } from 'vitest';
import {
  appendForwarded,
  clientResponseHeaders,
  ensureHost,
  restateFraming,
  restateUpgrade,
  stripConnectionListed,
  stripHopByHop,
  upstreamRequestHeaders,
  type HeaderPair,
  type RequestContext,
} from './headers.js';

const ctx: RequestContext = { remoteAddress: '::ffff:10.1.2.3', encrypted: false, upstreamHost: 'coder:8080', forwarded: true, upgrade: undefined, chunked: false, emptyBodyNeedsLength: false };
const h = (...pairs: Array<[string, string]>): HeaderPair[] => pairs;

describe('request passes', () => {
  it.each<[string, HeaderPair[], HeaderPair[]]>([
    ['drops the fixed hop-by-hop set, any case', h(['Connection', 'close'], ['KEEP-ALIVE', '5'], ['Proxy-Connection', 'x'], ['TE', 'trailers'], ['Transfer-Encoding', 'chunked'], ['Upgrade', 'h2c'], ['Accept', '*/*']), h(['Accept', '*/*'])],
    ['keeps end-to-end headers in order and case', h(['X-B', '2'], ['x-a', '1'], ['X-B', '3']), h(['X-B', '2'], ['x-a', '1'], ['X-B', '3'])],
  ])('stripHopByHop %s', (_n, input, out) => expect(stripHopByHop(input)).toEqual(out));

  it.each<[string, HeaderPair[], HeaderPair[]]>([
    ['drops headers Connection lists', h(['Connection', 'X-Foo, x-bar'], ['X-Foo', '1'], ['X-Bar', '2'], ['X-Baz', '3']), h(['Connection', 'X-Foo, x-bar'], ['X-Baz', '3'])],
    ['reads every Connection line', h(['Connection', 'a'], ['Connection', 'b'], ['A', '1'], ['B', '2']), h(['Connection', 'a'], ['Connection', 'b'])],
    ['no Connection, no change', h(['A', '1']), h(['A', '1'])],
  ])('stripConnectionListed %s', (_n, input, out) => expect(stripConnectionListed(input)).toEqual(out));

  it.each<[string, HeaderPair[], Partial<RequestContext>, HeaderPair[]]>([
    ['keeps the client Host', h(['Host', 'coder.example.com']), {}, h(['Host', 'coder.example.com'])],
    ['adds the upstream host when absent (HTTP/1.0)', h(), {}, h(['Host', 'coder:8080'])],
  ])('ensureHost %s', (_n, input, c, out) => expect(ensureHost(input, { ...ctx, ...c })).toEqual(out));

  it.each<[string, HeaderPair[], Partial<RequestContext>, HeaderPair[]]>([
    ['appends to the first X-Forwarded-For, unmapping IPv4', h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1']), {}, h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1, 10.1.2.3'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'h'])],
    ['adds X-Forwarded-For when absent', h(['Host', 'h']), {}, h(['Host', 'h'], ['X-Forwarded-For', '10.1.2.3'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'h'])],
    ['keeps proto and host already set', h(['Host', 'h'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'ext']), {}, h(['Host', 'h'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'ext'], ['X-Forwarded-For', '10.1.2.3'])],
    ['IPv6 clients stay as they are', h(['Host', 'h']), { remoteAddress: '::1', encrypted: true }, h(['Host', 'h'], ['X-Forwarded-For', '::1'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'h'])],
    ['off: nothing changes', h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1']), { forwarded: false }, h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1'])],
  ])('appendForwarded %s', (_n, input, c, out) => expect(appendForwarded(input, { ...ctx, ...c })).toEqual(out));

  it('restateUpgrade and restateFraming add their framing only when asked', () => {
    expect(restateUpgrade(h(['A', '1']), { ...ctx, upgrade: 'DERP' })).toEqual(h(['A', '1'], ['Connection', 'Upgrade'], ['Upgrade', 'DERP']));
    expect(restateUpgrade(h(['A', '1']), ctx)).toEqual(h(['A', '1']));
    expect(restateFraming(h(['A', '1']), { ...ctx, chunked: true })).toEqual(h(['A', '1'], ['Transfer-Encoding', 'chunked']));
    expect(restateFraming(h(['A', '1']), { ...ctx, emptyBodyNeedsLength: true })).toEqual(h(['A', '1'], ['Content-Length', '0']));
    expect(restateFraming(h(['A', '1']), ctx)).toEqual(h(['A', '1']));
  });

  it('runs the passes in order on raw headers', () => {
    const raw = ['Host', 'h', 'Connection', 'Upgrade, X-Hop', 'Upgrade', 'websocket', 'X-Hop', '1', 'Sec-WebSocket-Key', 'k'];
    expect(upstreamRequestHeaders(raw, { ...ctx, upgrade: 'websocket', forwarded: false })).toEqual(
      h(['Host', 'h'], ['Sec-WebSocket-Key', 'k'], ['Connection', 'Upgrade'], ['Upgrade', 'websocket']),
    );
  });
});

describe('response passes', () => {
  it('drop hop-by-hop and Connection-listed headers, keep repeats', () => {
    const raw = ['Set-Cookie', 'a=1', 'Connection', 'keep-alive, X-Hop', 'X-Hop', '1', 'Transfer-Encoding', 'chunked', 'Set-Cookie', 'b=2', 'Keep-Alive', 'timeout=5'];
    expect(clientResponseHeaders(raw)).toEqual(h(['Set-Cookie', 'a=1'], ['Set-Cookie', 'b=2']));
  });
});
