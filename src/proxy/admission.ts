import type { IncomingMessage } from 'node:http';
import type { CoderError } from './errors.js';

/**
 * Requests the guard refuses before forwarding, because the guard and coderd (Go's
 * net/http) could read them differently. Node's parser already refuses most ambiguous
 * framing (CL with TE, differing CLs, obs-fold, bare LF); these are the ones it accepts
 * and Go does not.
 */
export interface Refusal {
  status: number;
  reason: 'duplicate_host' | 'unsupported_transfer_encoding' | 'transfer_encoding_http10' | 'chunked_upgrade';
  body: CoderError;
}

const count = (raw: readonly string[], name: string) => {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).length === name.length && (raw[i] as string).toLowerCase() === name) n++;
  return n;
};

/**
 * Why a request must not be forwarded, or null when it may be.
 * - Two Host lines: RFC 9112 §3.2 says 400, and Go and nginx answer it; which one would
 *   coderd route on?
 * - A Transfer-Encoding other than exactly `chunked` (`gzip, chunked`): Node de-chunks it
 *   and would forward the still-gzipped bytes as a plain body; Go and nginx answer 501.
 * - Transfer-Encoding on an HTTP/1.0 request: Go ignores it and would read the chunked
 *   bytes as a next request, Node reads them as the body; nginx answers 400.
 */
export function refusal(req: IncomingMessage): Refusal | null {
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
