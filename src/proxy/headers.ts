/**
 * Header rewriting as an ordered list of small passes. Each pass takes the header list of
 * one direction and returns a new one; nothing is edited in place. Headers are kept as
 * [name, value] pairs in their original order and case, so repeated headers (Set-Cookie)
 * and unusual casing reach the other side exactly as sent.
 */

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
  /** The client sent a chunked body: the guard re-chunks it on its own connection. */
  chunked: boolean;
  /**
   * No body, with a method Node's client frames as chunked by default (POST, PUT, PATCH,
   * WebDAV verbs...): the guard says "Content-Length: 0" instead.
   */
  emptyBodyNeedsLength: boolean;
}

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

const lower = (s: string) => s.toLowerCase();
const has = (headers: readonly HeaderPair[], name: string) => headers.some(([k]) => lower(k) === name);

/** Header names listed in Connection: they are hop-by-hop too (RFC 9110 §7.6.1). */
export const stripConnectionListed = (headers: HeaderPair[]): HeaderPair[] => {
  const listed = new Set<string>();
  for (const [k, v] of headers) {
    if (lower(k) === 'connection') for (const t of v.split(',')) if (t.trim()) listed.add(lower(t.trim()));
  }
  return listed.size ? headers.filter(([k]) => !listed.has(lower(k))) : headers;
};

/** Drops the fixed hop-by-hop set. */
export const stripHopByHop = (headers: HeaderPair[]): HeaderPair[] => headers.filter(([k]) => !HOP_BY_HOP.has(lower(k)));

/** HTTP/1.0 clients may omit Host; coderd needs one, so name the upstream. */
export const ensureHost: RequestPass = (headers, ctx) => (has(headers, 'host') ? headers : [...headers, ['Host', ctx.upstreamHost]]);

/** Adds the client to X-Forwarded-For; sets X-Forwarded-Proto and -Host when absent. */
export const appendForwarded: RequestPass = (headers, ctx) => {
  if (!ctx.forwarded) return headers;
  const addr = (ctx.remoteAddress ?? '').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  const out: HeaderPair[] = [];
  let xff = false;
  for (const h of headers) {
    if (!xff && lower(h[0]) === 'x-forwarded-for' && addr) {
      // Only the first X-Forwarded-For line is extended; repeated lines stay as they are.
      out.push([h[0], `${h[1]}, ${addr}`]);
      xff = true;
    } else out.push(h);
  }
  if (!xff && addr) out.push(['X-Forwarded-For', addr]);
  if (!has(headers, 'x-forwarded-proto')) out.push(['X-Forwarded-Proto', ctx.encrypted ? 'https' : 'http']);
  const host = headers.find(([k]) => lower(k) === 'host');
  if (!has(headers, 'x-forwarded-host') && host) out.push(['X-Forwarded-Host', host[1]]);
  return out;
};

/** For a tunnelled upgrade, restate the upgrade request on the guard's own connection. */
export const restateUpgrade: RequestPass = (headers, ctx) =>
  ctx.upgrade === undefined ? headers : [...headers, ['Connection', 'Upgrade'], ['Upgrade', ctx.upgrade]];

/**
 * Body framing on the guard's own connection. Transfer-Encoding is hop-by-hop, but a chunked
 * body still needs it: restate it so Node re-chunks the streamed body whatever the method.
 * A bodiless POST/PUT/PATCH without framing would otherwise go out chunked (Node's default
 * for those methods): "Content-Length: 0" says the same thing (RFC 9112 §6.3) more plainly.
 */
export const restateFraming: RequestPass = (headers, ctx) =>
  ctx.chunked ? [...headers, ['Transfer-Encoding', 'chunked']]
  : ctx.emptyBodyNeedsLength ? [...headers, ['Content-Length', '0']]
  : headers;

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

/** Builds the headers the guard sends upstream for a request. */
export function upstreamRequestHeaders(rawHeaders: readonly string[], ctx: RequestContext): HeaderPair[] {
  return requestPasses.reduce((h, pass) => pass(h, ctx), toPairs(rawHeaders));
}

/** Builds the headers the guard sends back to the client for an upstream response. */
export function clientResponseHeaders(rawHeaders: readonly string[]): HeaderPair[] {
  return responsePasses.reduce((h, pass) => pass(h), toPairs(rawHeaders));
}
