import type { ServerResponse } from 'node:http';

/** The kinds of upstream failure the guard tells apart (also a metrics label). */
export type UpstreamErrorKind = 'refused' | 'timeout' | 'reset' | 'dns' | 'tls' | 'other';

/** Classifies a Node network error from the upstream connection. */
export function classifyUpstreamError(err: unknown): UpstreamErrorKind {
  const code = (err as { code?: string } | null)?.code ?? '';
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ETIMEDOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UPSTREAM_CONNECT_TIMEOUT') return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNABORTED') return 'reset';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'dns';
  if (code.startsWith('ERR_TLS') || code.startsWith('CERT_') || code.includes('SELF_SIGNED') || code.startsWith('UNABLE_TO')) return 'tls';
  return 'other';
}

/** coderd's error body shape: `{"message","detail"}`. */
export interface CoderError {
  message: string;
  detail: string;
}

/**
 * Writes a JSON error in coderd's shape, unless the response has already started (then
 * the connection is cut). `close` ends the connection after it, for requests whose body
 * was not read.
 */
export function writeCoderError(res: ServerResponse, status: number, body: CoderError, close = false): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(json),
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(json);
}

/** The same error as raw HTTP/1.1 bytes, for a socket outside Node's response machinery. */
export function rawCoderError(status: number, reason: string, body: CoderError): string {
  const json = JSON.stringify(body);
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\nConnection: close\r\n\r\n${json}`;
}

/**
 * The answer for a request coderd never answered: 504 when reaching it timed out, 502
 * otherwise. The detail names the failure kind and code, never request data.
 */
export function upstreamFailure(kind: UpstreamErrorKind, err: unknown): { status: number; body: CoderError } {
  const code = (err as { code?: string } | null)?.code ?? 'unknown';
  if (kind === 'timeout') {
    return { status: 504, body: { message: 'Timed out reaching coderd.', detail: `coder-reinit-guard could not reach the upstream in time (${code}).` } };
  }
  return { status: 502, body: { message: 'Failed to reach coderd.', detail: `coder-reinit-guard could not get a response from the upstream (${kind}: ${code}).` } };
}
