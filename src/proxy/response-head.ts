import { STATUS_CODES, validateHeaderName, validateHeaderValue, type IncomingMessage, type ServerResponse } from 'node:http';
import { clientResponseHeaders, isHeader, type HeaderPair } from './headers.js';
import type { UpstreamHead } from './hop.js';

/**
 * coderd's response head, checked against everything Node's `writeHead` would refuse
 * (and throw on, inside an event handler, ending the process), and mapped the way Go's
 * `httputil.ReverseProxy` and nginx answer such responses:
 * - a status outside 100–599, the only valid ones (RFC 9110 §15): `099` (which Node cannot
 *   write) or `999` (which undici refuses to read): 502;
 * - `101` to a request that asked for no upgrade: 502 (the client would hang waiting);
 * - a header name or value Node refuses: 502 (a response missing a header is a different
 *   response);
 * - a reason phrase Node refuses (a control byte, DEL): the standard phrase instead;
 * - a `Trailer` declaration that cannot be honoured (an HTTP/1.0 client, HEAD, 204, 304, a
 *   `Content-Length` body: no chunked encoding, so no trailer section): dropped, as Go
 *   drops trailers it cannot deliver.
 */
export type ResponseHead =
  | { ok: true; status: number; reason: string; headers: HeaderPair[]; trailers: boolean }
  | { ok: false; problem: ResponseHeadProblem };

/** Why a response head cannot be relayed (a metrics label). */
export type ResponseHeadProblem = 'invalid_status' | 'unrequested_upgrade' | 'invalid_header';

/** What Node's `checkInvalidHeaderChar` refuses: anything but HTAB, SP..~ and obs-text. */
const INVALID_TEXT = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * Whether Node will send this response chunked, which is the only way a trailer section
 * can follow (`OutgoingMessage._storeHeader`): a body is allowed, no Content-Length was
 * given, and the client can take chunked encoding (HTTP/1.1, or 1.0 with `TE: chunked`).
 */
function willChunk(req: IncomingMessage, res: ServerResponse, status: number, headers: readonly HeaderPair[]): boolean {
  if (req.method === 'HEAD' || status === 204 || status === 304) return false;
  if (!(res as unknown as { useChunkedEncodingByDefault: boolean }).useChunkedEncodingByDefault) return false;
  return !headers.some(([k]) => isHeader(k, 'content-length'));
}

const isValidHeader = ([name, value]: HeaderPair): boolean => {
  try {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    return true;
  } catch {
    return false;
  }
};

/**
 * Builds the head the guard writes to the client for coderd's response, or says why it
 * cannot be relayed.
 *
 * @example
 * const head = responseHead(req, res, upRes);
 * if (head.ok) res.writeHead(head.status, head.reason, toFlat(head.headers));
 */
export function responseHead(req: IncomingMessage, res: ServerResponse, upRes: UpstreamHead): ResponseHead {
  const status = upRes.statusCode;
  if (status === 101) return { ok: false, problem: 'unrequested_upgrade' };
  if (status < 100 || status > 599) return { ok: false, problem: 'invalid_status' };
  let headers = clientResponseHeaders(upRes.rawHeaders);
  if (!headers.every(isValidHeader)) return { ok: false, problem: 'invalid_header' };
  const message = upRes.statusMessage;
  const reason = INVALID_TEXT.test(message) ? (STATUS_CODES[status] ?? '') : message;
  const trailers = willChunk(req, res, status, headers);
  if (!trailers) headers = headers.filter(([k]) => !isHeader(k, 'trailer'));
  return { ok: true, status, reason, headers, trailers };
}

/**
 * Serializes a status line and headers as raw HTTP/1.1 bytes (latin1, one char per byte).
 * The reason phrase is coderd's unless it holds a byte that has no place in a status line;
 * then the standard one.
 */
export function rawHead(status: number, message: string, headers: readonly HeaderPair[]): string {
  const reason = INVALID_TEXT.test(message) ? (STATUS_CODES[status] ?? '') : message;
  let s = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [k, v] of headers) s += `${k}: ${v}\r\n`;
  return `${s}\r\n`;
}

/** The part of Node's OutgoingMessage that `writeEarlyHints` and `writeContinue` write with. */
interface RawWritable {
  _writeRaw?: (data: string, encoding: BufferEncoding) => boolean;
}

/**
 * Writes an interim (1xx) response of coderd's to the client ahead of the final one, as
 * coderd sent it: its status line and every header line in order, less hop-by-hop ones.
 * Node's `writeEarlyHints` would not do: it takes the headers as an object (one `Link`
 * survives of several), validates `Link` against its own grammar and throws on a value
 * coderd may send (`Link: preload-me`). The bytes go through the response's own raw
 * writer, as `writeEarlyHints` does, so they queue behind an earlier response still
 * writing on a keep-alive connection. A 1xx is advisory: one carrying a header line Node
 * would refuse is dropped, and nothing here can throw into the hop. Returns whether it was
 * written.
 */
export function writeInformational(res: ServerResponse, head: UpstreamHead): boolean {
  try {
    const writeRaw = (res as unknown as RawWritable)._writeRaw;
    if (typeof writeRaw !== 'function' || res.destroyed) return false;
    const headers = clientResponseHeaders(head.rawHeaders);
    if (!headers.every(isValidHeader)) return false;
    writeRaw.call(res, rawHead(head.statusCode, head.statusMessage, headers), 'latin1');
    return true;
  } catch {
    return false;
  }
}
