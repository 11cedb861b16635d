/**
 * A seeded generator of odd upstream responses: status lines, reason phrases, framing
 * conflicts, trailers, 1xx (valid and malformed) and 101, bodies where none may be, and
 * bodiless statuses that keep their framing headers. The same seed always gives
 * the same cases, so a failure names a case that can be replayed.
 */

/** mulberry32: a small, well-distributed 32-bit PRNG. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(rnd: () => number, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;

const STATUSES = [200, 200, 200, 201, 204, 206, 301, 304, 400, 404, 500, 502, 101, 99, 0, 600, 999] as const;
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/1.2'] as const;
const REASONS = ['OK', 'OK', '', 'Some Reason', 'O\x7fK', 'Bad\x01Byte', 'Caf\xe9', 'Tab\there', 'x'.repeat(300)] as const;
const HEADERS = [
  'Content-Type: application/json',
  'Set-Cookie: a=1; Path=/',
  'Set-Cookie: b=2; HttpOnly',
  'X-Obs-Text: caf\xe9',
  'Trailer: X-T',
  'Connection: close',
  'Connection: keep-alive',
  'Connection: Content-Length',
  'Connection: X-Hop',
  'X-Hop: 1',
  'Keep-Alive: timeout=5',
  'X-Empty:',
  'x-lower-case: v',
  'Content-Encoding: gzip',
  'Vary: Accept-Encoding',
  'Upgrade: h2c',
] as const;
const BAD_HEADERS = ['X-Del: a\x7fb', 'Bad Name: v', 'X-Nul: a\x00b', 'X-Fold: a\r\n b', ' X-Lead: v', 'X-Ctl: a\x01b'] as const;
const FRAMINGS = ['length', 'length', 'length', 'chunked', 'chunked', 'chunked', 'none', 'none', 'short_length', 'long_length', 'dup_length', 'two_lengths', 'bad_length', 'chunked_and_length', 'bad_chunk', 'gzip_chunked'] as const;

/**
 * Interim (1xx) responses coderd may send before its final one: valid ones (an unsolicited
 * 100, 102, 103 with an ordinary, an odd or two Link lines, two 103s) and malformed ones (a
 * header line without a colon, a control byte, an HTTP/1.0 status line, bytes after a 1xx
 * that are no response).
 */
const INTERIMS: ReadonlyArray<{ name: string; bytes: string; valid: boolean }> = [
  { name: '100', bytes: 'HTTP/1.1 100 Continue\r\n\r\n', valid: true },
  { name: '102', bytes: 'HTTP/1.1 102 Processing\r\n\r\n', valid: true },
  { name: '103', bytes: 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n', valid: true },
  { name: '103-odd-link', bytes: 'HTTP/1.1 103 Early Hints\r\nLink: preload-me\r\n\r\n', valid: true },
  { name: '103-two-links', bytes: 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-A: 1\r\nLink: </b.js>; rel=preload\r\n\r\n', valid: true },
  { name: '103x2', bytes: 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n', valid: true },
  { name: '1xx-no-colon', bytes: 'HTTP/1.1 103 Early Hints\r\nLink </a.css>\r\n\r\n', valid: false },
  { name: '1xx-ctl', bytes: 'HTTP/1.1 103 Early Hints\r\nX-Ctl: a\x01b\r\n\r\n', valid: false },
  { name: '1xx-http10', bytes: 'HTTP/1.0 103 Early Hints\r\nLink: </a.css>\r\n\r\n', valid: false },
  { name: '1xx-stray-bytes', bytes: 'HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nabc', valid: false },
];

/** One generated response and a description of how it was made. */
export interface GeneratedResponse {
  name: string;
  bytes: Buffer;
  /**
   * Well-formed HTTP/1.x: a status Node can write, clean framing, valid header lines and
   * reason, no body where the status forbids one. A proxy owes such a response a faithful
   * relay (given a request that allows a body, see `hasBody`).
   */
  valid: boolean;
  /** Whether bytes follow the head (a HEAD request must not see any). */
  hasBody: boolean;
  /** No Content-Length or chunked framing: the body ends when the connection does. */
  closeDelimited: boolean;
  /** The 1xx responses before the final one, as sent (empty if none). */
  interim: string;
}

const chunked = (body: string, trailers: string) => `${body.length ? `${body.length.toString(16)}\r\n${body}\r\n` : ''}0\r\n${trailers}\r\n`;

/**
 * Generates one response from the PRNG. For a HEAD request (`forHead`) the body is usually
 * left out, as a correct server leaves it out, keeping its framing headers.
 */
export function generateResponse(rnd: () => number, forHead = false): GeneratedResponse {
  const parts: string[] = [];
  let head = '';
  let interimValid = true;
  if (rnd() < 0.2) {
    // Mostly valid ones: a malformed 1xx spoils its whole response, and the happy path must
    // stay well exercised.
    const wantValid = rnd() < 0.75;
    const info = pick(rnd, INTERIMS.filter((x) => x.valid === wantValid));
    head += info.bytes;
    interimValid = info.valid;
    parts.push(info.name);
  }
  const interim = head;
  const version = pick(rnd, VERSIONS);
  const status = pick(rnd, STATUSES);
  const reason = pick(rnd, REASONS);
  parts.push(`${version} ${status}`, JSON.stringify(reason.slice(0, 12)));
  const headers: string[] = [];
  for (let i = Math.floor(rnd() * 5); i > 0; i--) headers.push(pick(rnd, HEADERS));
  if (rnd() < 0.12) headers.push(pick(rnd, BAD_HEADERS));
  const sse = rnd() < 0.1;
  const body = sse ? 'event: ping\n\n' : 'b'.repeat(Math.floor(rnd() * 40));
  if (sse) headers.push('Content-Type: text/event-stream');
  const framing = pick(rnd, FRAMINGS);
  const trailers = rnd() < 0.4 ? 'X-T: trailer-value\r\n' : '';
  parts.push(framing, ...headers.map((h) => JSON.stringify(h.slice(0, 14))));
  let tail = '';
  switch (framing) {
    case 'length':
      headers.push(`Content-Length: ${body.length}`);
      tail = body;
      break;
    case 'short_length':
      headers.push(`Content-Length: ${Math.max(0, body.length - 3)}`);
      tail = body;
      break;
    case 'long_length':
      headers.push(`Content-Length: ${body.length + 10}`);
      tail = body;
      break;
    case 'dup_length':
      headers.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length}`);
      tail = body;
      break;
    case 'two_lengths':
      headers.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length + 1}`);
      tail = body;
      break;
    case 'bad_length':
      headers.push(`Content-Length: ${pick(rnd, ['-1', 'abc', '1e3', '+5', '5, 5'])}`);
      tail = body;
      break;
    case 'chunked':
      headers.push('Transfer-Encoding: chunked');
      tail = chunked(body, trailers);
      break;
    case 'chunked_and_length':
      headers.push('Transfer-Encoding: chunked', `Content-Length: ${body.length}`);
      tail = chunked(body, trailers);
      break;
    case 'bad_chunk':
      headers.push('Transfer-Encoding: chunked');
      tail = `zz\r\n${body}\r\n0\r\n\r\n`;
      break;
    case 'gzip_chunked':
      headers.push('Transfer-Encoding: gzip, chunked');
      tail = chunked(body, '');
      break;
    case 'none':
      tail = body;
      break;
  }
  if (forHead && rnd() < 0.8) tail = '';
  // A 204 or 304 keeps its framing headers without a body, as a correct server sends one
  // (a 304 carries the Content-Length of what a 200 would have sent, RFC 9110 §8.6).
  else if ((status === 204 || status === 304) && rnd() < 0.6) tail = '';
  head += `${version} ${String(status).padStart(3, '0')} ${reason}\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`;
  const hasBody = tail.length > 0;
  const valid =
    interimValid &&
    (version === 'HTTP/1.1' || (version === 'HTTP/1.0' && framing !== 'chunked')) &&
    status >= 200 && status <= 599 && // RFC 9110 §15: 100-599 are the valid codes
    !/[\x00-\x08\x0a-\x1f\x7f]/.test(reason) &&
    !headers.some((h) => (BAD_HEADERS as readonly string[]).includes(h)) &&
    (framing === 'length' || framing === 'chunked' || framing === 'none') &&
    !((status === 204 || status === 304) && hasBody);
  return { name: parts.join(' '), bytes: Buffer.from(head + tail, 'latin1'), valid, hasBody, closeDelimited: framing === 'none', interim };
}
