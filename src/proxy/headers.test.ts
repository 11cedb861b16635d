import { describe, expect, it } from 'vitest';
import {
  appendForwarded,
  clientResponseHeaders,
  ensureHost,
  hostFromTarget,
  restateFraming,
  restateUpgrade,
  stripConnectionListed,
  stripHopByHop,
  upstreamRequestHeaders,
  type HeaderPair,
  type RequestContext,
} from './headers.js';

const ctx: RequestContext = { remoteAddress: '::ffff:10.1.2.3', encrypted: false, upstreamHost: 'coder:8080', forwarded: true, upgrade: undefined, framing: { kind: 'none', zeroLength: false } };
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
    // Framing and Host are never hop-by-hop (request smuggling, issue #10).
    ['never drops Content-Length', h(['Connection', 'Content-Length'], ['Content-Length', '61']), h(['Connection', 'Content-Length'], ['Content-Length', '61'])],
    ['never drops Content-Length, listed among others, lowercase', h(['Connection', 'keep-alive, content-length'], ['content-length', '3']), h(['Connection', 'keep-alive, content-length'], ['content-length', '3'])],
    ['never drops Host', h(['Host', 'coder.example.com'], ['Connection', 'Host, X-A'], ['X-A', '1']), h(['Host', 'coder.example.com'], ['Connection', 'Host, X-A'])],
    ['never drops Transfer-Encoding (the framing pass decides it)', h(['Connection', 'Transfer-Encoding'], ['Transfer-Encoding', 'chunked']), h(['Connection', 'Transfer-Encoding'], ['Transfer-Encoding', 'chunked'])],
  ])('stripConnectionListed %s', (_n, input, out) => expect(stripConnectionListed(input)).toEqual(out));

  it.each<[string, HeaderPair[], Partial<RequestContext>, HeaderPair[]]>([
    ['keeps the client Host', h(['Host', 'coder.example.com']), {}, h(['Host', 'coder.example.com'])],
    ['adds the upstream host when absent (HTTP/1.0)', h(), {}, h(['Host', 'coder:8080'])],
  ])('ensureHost %s', (_n, input, c, out) => expect(ensureHost(input, { ...ctx, ...c })).toEqual(out));

  it.each<[string, HeaderPair[], Partial<RequestContext>, HeaderPair[]]>([
    ['appends to the first X-Forwarded-For, unmapping IPv4', h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1']), {}, h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1, 10.1.2.3'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'h'])],
    [
      'merges every X-Forwarded-For line into the first and appends once (no spoofed rightmost entry)',
      h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1'], ['X-A', '1'], ['x-forwarded-for', '6.6.6.6, 7.7.7.7'], ['X-Forwarded-For', ' ']),
      {},
      h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1, 6.6.6.6, 7.7.7.7, 10.1.2.3'], ['X-A', '1'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'h']),
    ],
    ['adds X-Forwarded-For when absent', h(['Host', 'h']), {}, h(['Host', 'h'], ['X-Forwarded-For', '10.1.2.3'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'h'])],
    ['keeps proto and host already set', h(['Host', 'h'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'ext']), {}, h(['Host', 'h'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'ext'], ['X-Forwarded-For', '10.1.2.3'])],
    ['IPv6 clients stay as they are', h(['Host', 'h']), { remoteAddress: '::1', encrypted: true }, h(['Host', 'h'], ['X-Forwarded-For', '::1'], ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'h'])],
    ['off: nothing changes', h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1']), { forwarded: false }, h(['Host', 'h'], ['X-Forwarded-For', '1.1.1.1'])],
  ])('appendForwarded %s', (_n, input, c, out) => expect(appendForwarded(input, { ...ctx, ...c })).toEqual(out));

  it('restateUpgrade adds the upgrade only when asked', () => {
    expect(restateUpgrade(h(['A', '1']), { ...ctx, upgrade: 'DERP' })).toEqual(h(['A', '1'], ['Connection', 'Upgrade'], ['Upgrade', 'DERP']));
    expect(restateUpgrade(h(['A', '1']), ctx)).toEqual(h(['A', '1']));
  });

  it.each<[string, HeaderPair[], RequestContext['framing'], HeaderPair[]]>([
    ['chunked: restated', h(['A', '1']), { kind: 'chunked' }, h(['A', '1'], ['Transfer-Encoding', 'chunked'])],
    ['length: kept in place and case', h(['A', '1'], ['content-LENGTH', '12'], ['B', '2']), { kind: 'length', length: '12' }, h(['A', '1'], ['content-LENGTH', '12'], ['B', '2'])],
    ['length: repeated lines become one', h(['Content-Length', '5'], ['A', '1'], ['Content-Length', '5']), { kind: 'length', length: '5' }, h(['Content-Length', '5'], ['A', '1'])],
    ['length: restored when the line was lost', h(['A', '1']), { kind: 'length', length: '61' }, h(['A', '1'], ['Content-Length', '61'])],
    ['none: a stray Content-Length never goes up', h(['A', '1'], ['Content-Length', '7']), { kind: 'none', zeroLength: false }, h(['A', '1'])],
    ['none on POST: Content-Length 0', h(['A', '1']), { kind: 'none', zeroLength: true }, h(['A', '1'], ['Content-Length', '0'])],
    ['none on GET: nothing', h(['A', '1']), { kind: 'none', zeroLength: false }, h(['A', '1'])],
  ])('restateFraming %s', (_n, input, framing, out) => expect(restateFraming(input, { ...ctx, framing })).toEqual(out));

  it('runs the passes in order on raw headers', () => {
    const raw = ['Host', 'h', 'Connection', 'Upgrade, X-Hop', 'Upgrade', 'websocket', 'X-Hop', '1', 'Sec-WebSocket-Key', 'k'];
    expect(upstreamRequestHeaders(raw, { ...ctx, upgrade: 'websocket', forwarded: false })).toEqual(
      h(['Host', 'h'], ['Sec-WebSocket-Key', 'k'], ['Connection', 'Upgrade'], ['Upgrade', 'websocket']),
    );
  });

  it('the smuggling request of issue #10 keeps its framing and Host', () => {
    const raw = ['Host', 'h', 'Connection', 'keep-alive, Content-Length, Host', 'Content-Length', '61'];
    expect(upstreamRequestHeaders(raw, { ...ctx, forwarded: false, framing: { kind: 'length', length: '61' } })).toEqual(h(['Host', 'h'], ['Content-Length', '61']));
  });
});

describe('response passes', () => {
  it('drop hop-by-hop and Connection-listed headers, keep repeats', () => {
    const raw = ['Set-Cookie', 'a=1', 'Connection', 'keep-alive, X-Hop', 'X-Hop', '1', 'Transfer-Encoding', 'chunked', 'Set-Cookie', 'b=2', 'Keep-Alive', 'timeout=5'];
    expect(clientResponseHeaders(raw)).toEqual(h(['Set-Cookie', 'a=1'], ['Set-Cookie', 'b=2']));
  });

  it('never drop Content-Length, even when Connection lists it', () => {
    expect(clientResponseHeaders(['Connection', 'Content-Length', 'Content-Length', '2'])).toEqual(h(['Content-Length', '2']));
  });
});

describe('hostFromTarget (RFC 9112 §3.2.2)', () => {
  it.each<[string, string, string[], string[]]>([
    ['an absolute-form target replaces Host', 'http://coder.example/api/v2/x', ['Host', 'other.example', 'Accept', '*/*'], ['Host', 'coder.example', 'Accept', '*/*']],
    ['userinfo is dropped, the port kept, the name case kept', 'https://user:pw@Coder.Example:8443/x?y=1', ['host', 'other'], ['host', 'Coder.Example:8443']],
    ['HTTP/1.0 without Host gets one', 'http://coder.example/x', ['Accept', '*/*'], ['Accept', '*/*', 'Host', 'coder.example']],
    ['an empty authority keeps Host (as Go does)', 'http:///x', ['Host', 'h'], ['Host', 'h']],
    ['origin form keeps Host verbatim', '/api/v2/x', ['Host', 'Other.Example:80'], ['Host', 'Other.Example:80']],
    ['authority form (CONNECT) keeps Host verbatim', 'coder.example:443', ['Host', 'h:443'], ['Host', 'h:443']],
    ['asterisk form keeps Host verbatim', '*', ['Host', 'h'], ['Host', 'h']],
  ])('%s', (_name, target, raw, want) => {
    expect(hostFromTarget(raw, target)).toEqual(want);
  });

  it('leaves the client\'s array alone, and returns it as is when nothing changes', () => {
    const raw = ['Host', 'other'];
    expect(hostFromTarget(raw, 'http://coder/x')).not.toBe(raw);
    expect(raw).toEqual(['Host', 'other']);
    expect(hostFromTarget(raw, '/x')).toBe(raw);
  });
});
