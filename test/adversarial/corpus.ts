/**
 * Raw requests that a hostile or broken client can send, for the differential test
 * against nginx. Each case is the exact bytes of one connection. `differs` names why the
 * guard intentionally answers otherwise than nginx (the test fails on any undeclared
 * difference); `guard` pins what the guard must do.
 */
export interface Case {
  name: string;
  bytes: string;
  /** What the guard's client must see: the status codes of its responses, in order. */
  guard?: number[];
  /** Why the guard and nginx differ, when they do. */
  differs?: string;
}

const SMUGGLED = 'POST /smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 150\r\n\r\n';
const big = (n: number) => 'a'.repeat(n);
const lines = (n: number, width = 1) => Array.from({ length: n }, (_, i) => `X-L${i}: ${big(width)}\r\n`).join('');

export const CORPUS: Case[] = [
  // Framing
  { name: 'Content-Length body', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello', guard: [200] },
  { name: 'chunked body', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', guard: [200] },
  { name: 'chunked with extension and trailer', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n', guard: [200] },
  { name: 'GET with a Content-Length body', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc', guard: [200] },
  { name: 'CL and TE', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', guard: [400] },
  { name: 'two different Content-Lengths', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde', guard: [400] },
  { name: 'two equal Content-Lengths', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc', guard: [400] },
  { name: 'Content-Length list', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc', guard: [400] },
  { name: 'Content-Length with a sign', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc', guard: [400] },
  { name: 'TE chunked, identity', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n', guard: [400], differs: "Node's parser refuses a coding after chunked with 400; nginx answers 501: refused either way" },
  { name: 'TE gzip, chunked', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', guard: [501] },
  { name: 'TE in two lines', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', guard: [400] },
  { name: 'TE capitalised', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', guard: [200] },
  { name: 'TE with a space before the colon', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n', guard: [400] },
  { name: 'TE with a tab in the value', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n', guard: [200], differs: 'a tab is optional whitespace (RFC 9110 §5.6.3): Node and Go read chunked, nginx answers 501' },
  { name: 'TE on HTTP/1.0', bytes: 'POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', guard: [400] },
  { name: 'bad chunk size', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', guard: [400] },
  // Connection-listed framing and Host (issue #10)
  { name: 'Connection lists Content-Length', bytes: `GET /attacker HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, guard: [200] },
  { name: 'Connection lists keep-alive and Content-Length', bytes: `GET /attacker HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Content-Length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, guard: [200] },
  { name: 'Connection lists content-length, lowercase', bytes: `DELETE /attacker HTTP/1.1\r\nhost: h\r\nconnection: content-length\r\ncontent-length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, guard: [200] },
  { name: 'Connection lists Transfer-Encoding', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', guard: [200] },
  { name: 'Connection lists Host', bytes: 'GET /a HTTP/1.1\r\nHost: coder.example.com\r\nConnection: Host\r\n\r\n', guard: [200] },
  // Host and X-Forwarded-For
  { name: 'two Host headers', bytes: 'GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', guard: [400] },
  { name: 'no Host on HTTP/1.1', bytes: 'GET /a HTTP/1.1\r\n\r\n', guard: [400] },
  { name: 'no Host on HTTP/1.0', bytes: 'GET /a HTTP/1.0\r\n\r\n', guard: [200], differs: 'HTTP/1.0 needs no Host: the guard names coderd (ensureHost), nginx (with Host $http_host) answers 400' },
  { name: 'empty Host', bytes: 'GET /a HTTP/1.1\r\nHost:\r\n\r\n', guard: [200], differs: 'Go (coderd) accepts an empty Host, so the guard forwards it; nginx answers 400' },
  { name: 'X-Forwarded-For on two lines', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n', guard: [200] },
  // Bytes that have no place in a head
  { name: 'bare LF', bytes: 'GET /a HTTP/1.1\nHost: h\n\n', guard: [400], differs: "Node's strict parser refuses bare LF line ends (RFC 9112 §2.2 allows either); nginx accepts them" },
  { name: 'bare CR', bytes: 'GET /a HTTP/1.1\rHost: h\r\r\n\r\n', guard: [400] },
  { name: 'obs-fold', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n', guard: [400] },
  { name: 'NUL in a value', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\u0000c\r\n\r\n', guard: [400] },
  { name: 'NUL in the target', bytes: 'GET /a\u0000b HTTP/1.1\r\nHost: h\r\n\r\n', guard: [400] },
  { name: 'DEL in a value', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\u007fc\r\n\r\n', guard: [400], differs: 'the guard refuses a control byte in a value; nginx forwards it (and our strict upstream refuses it)' },
  { name: 'obs-text in a value', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX-A: b\u00ffc\r\n\r\n', guard: [200] },
  { name: 'space in a header name', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n', guard: [400] },
  // Sizes
  { name: 'one huge header', bytes: `GET /a HTTP/1.1\r\nHost: h\r\nX-Big: ${big(70_000)}\r\n\r\n`, guard: [431], differs: 'both refuse; nginx says 400, the guard 431 (RFC 6585)' },
  { name: '1,100 header lines, Content-Length past the thousandth', bytes: `POST /a HTTP/1.1\r\nHost: h\r\n${lines(1100)}Content-Length: 3\r\n\r\nabc`, guard: [200], differs: 'the guard forwards every line (coderd takes up to 1 MB of headers); nginx answers 400' },
  { name: 'header lines past 64 KiB', bytes: `GET /a HTTP/1.1\r\nHost: h\r\n${lines(9000)}\r\n`, guard: [431], differs: 'both refuse; nginx says 400, the guard 431 (RFC 6585)' },
  // Several requests on one connection
  { name: 'pipelined GETs', bytes: 'GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n', guard: [200, 200] },
  { name: 'pipelined POST then GET', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n', guard: [200, 200] },
  { name: 'HTTP/1.0 keep-alive', bytes: 'GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: h\r\n\r\n', guard: [200, 200] },
  { name: 'HTTP/1.0 without keep-alive', bytes: 'GET /a HTTP/1.0\r\nHost: h\r\n\r\nGET /b HTTP/1.0\r\nHost: h\r\n\r\n', guard: [200] },
  { name: 'Expect: 100-continue', bytes: 'POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc', guard: [100, 200] },
  // Targets
  { name: 'absolute form', bytes: 'GET http://elsewhere.example/a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n', guard: [200], differs: "the target's authority is the Host coderd sees (RFC 9112 §3.2.2; Go sets r.Host from it): the guard forwards Host: elsewhere.example; nginx, told to pass $http_host, forwards the Host line" },
  { name: 'absolute form with userinfo', bytes: 'GET http://user:SECRET@elsewhere.example/a HTTP/1.1\r\nHost: h\r\n\r\n', guard: [200], differs: 'Go accepts userinfo in an absolute-form target; the guard strips scheme, authority and userinfo and forwards the path; nginx answers 400' },
  { name: 'asterisk form', bytes: 'OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n', guard: [200], differs: 'OPTIONS * is valid HTTP (RFC 9112 §3.2.4): Go answers it itself (200, no body) before any handler, and so does the guard; nginx answers 400' },
  { name: 'CONNECT', bytes: 'CONNECT coder.example.com:443 HTTP/1.1\r\nHost: coder.example.com:443\r\n\r\n', guard: [200], differs: 'nginx does not proxy CONNECT; the guard tunnels it to coderd (workspace apps take CONNECT)' },
  { name: 'unknown method', bytes: 'FOO /a HTTP/1.1\r\nHost: h\r\n\r\n', guard: [400], differs: "Node's parser knows a fixed list of methods and refuses others with 400; nginx forwards any token (a known limit, README)" },
  // Upgrades
  { name: 'WebSocket upgrade', bytes: 'GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', guard: [101] },
  { name: 'DERP upgrade', bytes: 'GET /derp HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n', guard: [101] },
  { name: 'upgrade with a Content-Length body', bytes: 'GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello', guard: [101] },
  { name: 'upgrade with a chunked body', bytes: 'POST /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', guard: [400], differs: "Node's parser stops at an upgrade request's head, so the guard cannot tell where a chunked body ends: refused with 400; nginx forwards it" },
  { name: 'upgrade then a smuggled request', bytes: `GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n${SMUGGLED}`, guard: [101] },
];
