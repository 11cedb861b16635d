import type { IncomingMessage, ServerResponse } from 'node:http';
import { STATUS_CODES } from 'node:http';
import { rawCoderError, writeCoderError, type CoderError } from './errors.js';

/**
 * Requests the guard refuses before forwarding, because the guard and coderd (Go's
 * net/http) could read them differently. Node's parser already refuses most ambiguous
 * framing (CL with TE, differing CLs, obs-fold, bare LF); these are the ones it accepts
 * and Go does not.
 */
export type Refusal = CoderRefusal | GoRefusal;

/** Why a request was refused (a metrics label). */
export type RefusalReason =
  | 'duplicate_host'
  | 'unsupported_transfer_encoding'
  | 'transfer_encoding_http10'
  | 'chunked_upgrade'
  | 'malformed_request_line'
  | 'unsupported_version';

/** A refusal coderd's handlers would make: answered with a JSON error in coderd's shape. */
export interface CoderRefusal {
  status: number;
  reason: RefusalReason;
  body: CoderError;
}

/**
 * A request Go's server refuses itself, before any handler of coderd's sees it: answered
 * as Go's `(*conn).serve` answers it, `HTTP/1.1 <status> <text>`, a plain-text body
 * `<status> <text>` and `Connection: close` (net/http server.go).
 */
export interface GoRefusal {
  status: number;
  reason: RefusalReason;
  text: string;
}

/**
 * A request line Go cannot parse. Node reads a request line without a version
 * (`GET /a`, HTTP/0.9's form) as version 0.9; Go's `parseRequestLine` wants three parts
 * and answers its generic 400.
 */
export const MALFORMED_REQUEST_LINE: GoRefusal = { status: 400, reason: 'malformed_request_line', text: 'Bad Request' };

/**
 * A version Go does not serve: its HTTP/1 server takes only HTTP/1.x (and the HTTP/2
 * preface `PRI * HTTP/2.0`, which Node's parser stops at), and answers any other
 * `HTTP/d.d` with a 505 (`http1ServerSupportsRequest`).
 */
export const UNSUPPORTED_VERSION: GoRefusal = { status: 505, reason: 'unsupported_version', text: 'HTTP Version Not Supported: unsupported protocol version' };

const count = (raw: readonly string[], name: string) => {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).length === name.length && (raw[i] as string).toLowerCase() === name) n++;
  return n;
};

/**
 * Why a request must not be forwarded, or null when it may be.
 * - A version other than HTTP/1.x: `GET /a` (no version) gets Go's 400, `HTTP/2.0` its
 *   505. (Node also reads an explicit `HTTP/0.9` as a line without version: 400, where Go
 *   says 505; refused either way.)
 * - Two Host lines: RFC 9112 §3.2 says 400, and Go and nginx answer it; which one would
 *   coderd route on?
 * - A Transfer-Encoding other than exactly `chunked` (`gzip, chunked`): Node de-chunks it
 *   and would forward the still-gzipped bytes as a plain body; Go and nginx answer 501.
 * - Transfer-Encoding on an HTTP/1.0 request: Go ignores it and would read the chunked
 *   bytes as a next request, Node reads them as the body; nginx answers 400.
 */
export function refusal(req: IncomingMessage): Refusal | null {
  // Go refuses these before reading any header: never forwarded as HTTP/1.1.
  if (req.httpVersionMajor !== 1) return req.httpVersionMajor === 0 ? MALFORMED_REQUEST_LINE : UNSUPPORTED_VERSION;
  if (count(req.rawHeaders, 'host') > 1) {
    return { status: 400, reason: 'duplicate_host', body: { message: 'Bad Request.', detail: 'The request has more than one Host header.' } };
  }
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) {
      return { status: 400, reason: 'transfer_encoding_http10', body: { message: 'Bad Request.', detail: 'Transfer-Encoding is not allowed in an HTTP/1.0 request.' } };
    }
    if (te.trim().toLowerCase() !== 'chunked') {
      return { status: 501, reason: 'unsupported_transfer_encoding', body: { message: 'Not Implemented.', detail: 'Only the chunked transfer coding is supported.' } };
    }
  }
  return null;
}

/**
 * The refusal of a request line Node's parser rejected for its version
 * (HPE_INVALID_VERSION), when Go would parse that version and refuse it with a 505:
 * `HTTP/3.0`, `HTTP/2.1`, `HTTP/0.8`. Null for anything else (a malformed version, or
 * `HTTP/1.2`, which Go serves as HTTP/1.x and Node refuses: a 400 either way). `packet` is
 * the buffer Node was parsing and `at` where it failed (the end of the version).
 */
export function unparsedVersionRefusal(packet: Buffer | undefined, at: number | undefined): GoRefusal | null {
  if (!packet || at === undefined || at > packet.length) return null;
  const start = packet.lastIndexOf(0x0a, at - 1) + 1;
  const m = /^[^ ]+ [^ ]+ HTTP\/(\d)\.\d$/.exec(packet.toString('latin1', start, at));
  return m && m[1] !== '1' ? UNSUPPORTED_VERSION : null;
}

/** Go's answer to a request it refuses itself, as raw bytes: the body ends with the connection. */
const goAnswer = (r: GoRefusal) => `HTTP/1.1 ${r.status} ${r.text}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n${r.status} ${r.text}`;

/** Answers a refused request on its response; the connection closes after it. */
export function writeRefusal(res: ServerResponse, r: Refusal): void {
  if ('body' in r) return writeCoderError(res, r.status, r.body, true);
  if (res.headersSent || res.destroyed) return void res.destroy();
  // Byte for byte what Go writes: no Date, no Content-Length, the body delimited by the close.
  res.sendDate = false;
  res.useChunkedEncodingByDefault = false;
  res.writeHead(r.status, r.text, ['Content-Type', 'text/plain; charset=utf-8', 'Connection', 'close']);
  res.end(`${r.status} ${r.text}`);
}

/** The same answer as raw bytes, for a socket outside Node's response machinery. */
export function rawRefusal(r: Refusal): string {
  return 'body' in r ? rawCoderError(r.status, STATUS_CODES[r.status] ?? '', r.body) : goAnswer(r);
}
