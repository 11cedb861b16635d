/**
 * Header rewriting as an ordered list of small passes. Each pass takes the header list of
 * one direction and returns a new one; nothing is edited in place. Headers are kept as
 * [name, value] pairs in their original order and case, so repeated headers (Set-Cookie)
 * and unusual casing reach the other side exactly as sent.
 */

import { targetAuthority } from './target.js';

/** One header line, name as received. */
export type HeaderPair = readonly [name: string, value: string];

/** What a request pass may know about the request besides its headers. */
export interface RequestContext {
  /** The client's address as the guard's socket sees it. */
  remoteAddress: string | undefined;
  /** Whether the client reached the guard over TLS. */
  encrypted: boolean;
  /** "host:port" of the upstream, for requests without a Host header (HTTP/1.0). */
  upstreamHost: string;
  /** Append X-Forwarded-* headers (REINIT_GUARD_FORWARDED_HEADERS=append). */
  forwarded: boolean;
  /** The value of Upgrade when this request is an upgrade the guard tunnels. */
  upgrade: string | undefined;
  /** How the request body is framed on the guard's connection to coderd. */
  framing: Framing;
}

/**
 * The body framing the guard itself decides for the upstream request, from what Node's
 * parser validated on the client's request (never from headers a client can tamper with):
 * - `chunked`: the client sent a chunked body; the guard re-chunks it;
 * - `length`: the client sent `Content-Length`; the same length goes upstream;
 * - `none`: no body. `zeroLength` says "Content-Length: 0" for methods Node's client would
 *   otherwise frame as chunked (POST, PUT, PATCH, WebDAV verbs), the same meaning
 *   (RFC 9112 §6.3) said plainly.
 */
export type Framing = { kind: 'chunked' } | { kind: 'length'; length: string } | { kind: 'none'; zeroLength: boolean };

export type RequestPass = (headers: HeaderPair[], ctx: RequestContext) => HeaderPair[];
export type ResponsePass = (headers: HeaderPair[]) => HeaderPair[];

/**
 * Hop-by-hop headers, meaningful only for one connection and never forwarded.
 * RFC 9110 §7.6.1 (https://www.rfc-editor.org/rfc/rfc9110#section-7.6.1).
 */
export const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'te', 'transfer-encoding', 'upgrade']);

/** Turns Node's flat rawHeaders array into pairs. */
export function toPairs(raw: readonly string[]): HeaderPair[] {
  const out: HeaderPair[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i] as string, raw[i + 1] as string]);
  return out;
}

/** Turns pairs back into a flat array, the form Node accepts for raw headers. */
export function toFlat(pairs: readonly HeaderPair[]): string[] {
  const out: string[] = [];
  for (const [k, v] of pairs) out.push(k, v);
  return out;
}

/**
 * Headers a `Connection` line can never remove. Framing and Host are not hop-by-hop: were a
 * client allowed to strip its own `Content-Length`, its body would reach coderd unframed on
 * a shared keep-alive connection and be read as the next request (request smuggling); were
 * it allowed to strip `Host`, coderd would route on a Host the client never sent.
 */
export const NEVER_HOP_BY_HOP = new Set(['host', 'content-length', 'transfer-encoding']);

const lower = (s: string) => s.toLowerCase();

/**
 * Whether header name `k` is `name` (given in lowercase), case-insensitively. The length is
 * compared first: every request runs several passes over every header, and most names
 * differ in length from the one sought, so they are never lowercased.
 */
export const isHeader = (k: string, name: string): boolean => k.length === name.length && (k === name || k.toLowerCase() === name);

/**
 * A case-insensitive test for membership in a set of lowercase header names, lowercasing
 * only names whose length one of them has (as {@link isHeader} does for one name).
 */
export const headerNameMatcher = (names: ReadonlySet<string>): ((k: string) => boolean) => {
  const lengths = new Set([...names].map((n) => n.length));
  return (k) => lengths.has(k.length) && names.has(k.toLowerCase());
};

const isHopByHop = headerNameMatcher(HOP_BY_HOP);

const has = (headers: readonly HeaderPair[], name: string) => headers.some(([k]) => isHeader(k, name));

/**
 * Header names listed in Connection: they are hop-by-hop too (RFC 9110 §7.6.1), except
 * framing and Host ({@link NEVER_HOP_BY_HOP}), which the guard decides on its own.
 */
export const stripConnectionListed = (headers: HeaderPair[]): HeaderPair[] => {
  const listed = new Set<string>();
  for (const [k, v] of headers) {
    if (!isHeader(k, 'connection')) continue;
    for (const t of v.split(',')) {
      const name = lower(t.trim());
      if (name && !NEVER_HOP_BY_HOP.has(name)) listed.add(name);
    }
  }
  return listed.size ? headers.filter(([k]) => !listed.has(lower(k))) : headers;
};

/** Drops the fixed hop-by-hop set. */
export const stripHopByHop = (headers: HeaderPair[]): HeaderPair[] => headers.filter(([k]) => !isHopByHop(k));

/** HTTP/1.0 clients may omit Host; coderd needs one, so name the upstream. */
export const ensureHost: RequestPass = (headers, ctx) => (has(headers, 'host') ? headers : [...headers, ['Host', ctx.upstreamHost]]);

/**
 * Adds the client to X-Forwarded-For; sets X-Forwarded-Proto and -Host when absent. Every
 * X-Forwarded-For line the client sent is merged into one (RFC 9110 §5.3: the same as a
 * comma-joined list) and the client's address appended once, as nginx's
 * `$proxy_add_x_forwarded_for` does: coderd takes the rightmost untrusted entry, so a value
 * on a later line must never end up right of the guard's.
 */
export const appendForwarded: RequestPass = (headers, ctx) => {
  if (!ctx.forwarded) return headers;
  const addr = (ctx.remoteAddress ?? '').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  const out: HeaderPair[] = [];
  const sent: string[] = [];
  let at = -1;
  for (const h of headers) {
    if (!isHeader(h[0], 'x-forwarded-for')) {
      out.push(h);
      continue;
    }
    if (at === -1) {
      at = out.length;
      out.push(h);
    }
    if (h[1].trim()) sent.push(h[1].trim());
  }
  if (addr) sent.push(addr);
  if (at !== -1) out[at] = [(out[at] as HeaderPair)[0], sent.join(', ')];
  else if (addr) out.push(['X-Forwarded-For', addr]);
  if (!has(headers, 'x-forwarded-proto')) out.push(['X-Forwarded-Proto', ctx.encrypted ? 'https' : 'http']);
  const host = headers.find(([k]) => isHeader(k, 'host'));
  if (!has(headers, 'x-forwarded-host') && host) out.push(['X-Forwarded-Host', host[1]]);
  return out;
};

/** For a tunnelled upgrade, restate the upgrade request on the guard's own connection. */
export const restateUpgrade: RequestPass = (headers, ctx) =>
  ctx.upgrade === undefined ? headers : [...headers, ['Connection', 'Upgrade'], ['Upgrade', ctx.upgrade]];

/**
 * Body framing on the guard's own connection, decided by the guard alone ({@link Framing}).
 * Every Content-Length line the client sent is replaced by the one the guard decided, in
 * the place (and name case) of the first; Transfer-Encoding is hop-by-hop and restated
 * only for a chunked body. So a body never goes upstream without explicit framing, and no
 * framing goes upstream without the body it announces.
 */
export const restateFraming: RequestPass = (headers, { framing }) => {
  const out: HeaderPair[] = [];
  for (const h of headers) {
    if (!isHeader(h[0], 'content-length')) out.push(h);
    else if (framing.kind === 'length' && !has(out, 'content-length')) out.push([h[0], framing.length]);
  }
  if (framing.kind === 'chunked') out.push(['Transfer-Encoding', 'chunked']);
  else if (framing.kind === 'length' && !has(out, 'content-length')) out.push(['Content-Length', framing.length]);
  else if (framing.kind === 'none' && framing.zeroLength) out.push(['Content-Length', '0']);
  return out;
};

/** The request passes, in order. */
export const requestPasses: readonly RequestPass[] = [
  (h) => stripConnectionListed(h),
  (h) => stripHopByHop(h),
  ensureHost,
  appendForwarded,
  restateUpgrade,
  restateFraming,
];

/** The response passes, in order. */
export const responsePasses: readonly ResponsePass[] = [stripConnectionListed, stripHopByHop];

/**
 * The raw headers of a request whose target is in absolute form
 * (`GET http://coder.example/x`), with Host set to the target's authority: RFC 9112 §3.2.2
 * has the recipient ignore the Host line and a proxy generate Host from the target, and Go
 * (coderd) sets `r.Host` from it. Every Host line gets the authority in place (a request
 * with two is refused anyway), and one is added when the client sent none (HTTP/1.0).
 * Any other target returns `rawHeaders` itself: Host is then forwarded verbatim.
 */
export function hostFromTarget(rawHeaders: string[], target: string): string[] {
  const authority = targetAuthority(target);
  if (authority === null) return rawHeaders;
  const out = rawHeaders.slice();
  let found = false;
  for (let i = 0; i + 1 < out.length; i += 2) {
    if (!isHeader(out[i] as string, 'host')) continue;
    out[i + 1] = authority;
    found = true;
  }
  if (!found) out.push('Host', authority);
  return out;
}

/** Builds the headers the guard sends upstream for a request. */
export function upstreamRequestHeaders(rawHeaders: readonly string[], ctx: RequestContext): HeaderPair[] {
  return requestPasses.reduce((h, pass) => pass(h, ctx), toPairs(rawHeaders));
}

/** Builds the headers the guard sends back to the client for an upstream response. */
export function clientResponseHeaders(rawHeaders: readonly string[]): HeaderPair[] {
  return responsePasses.reduce((h, pass) => pass(h), toPairs(rawHeaders));
}
