/**
 * The request target, read the way coderd (Go's net/http and chi) reads it. The guard must
 * route on what coderd will route on, or a client could dress up `/reinit` so that the
 * guard forwards it uninspected while coderd still serves it; and it must forward the
 * target byte for byte, so the bytes are never rebuilt from a parsed URL.
 */

/** `scheme://authority` at the start of an absolute-form target (RFC 9112 §3.2.2). */
const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/;

/**
 * The target to send coderd: an origin-form target unchanged; an absolute-form one with its
 * scheme and authority (and any userinfo) cut off, the rest kept byte for byte. The guard
 * only ever talks to its configured coderd: it is not an open proxy.
 *
 * @example
 * originForm('http://user:pw@coder/api/v2/x?y=1') // => '/api/v2/x?y=1'
 */
export function originForm(target: string): string {
  if (target.startsWith('/')) return target;
  const m = ABSOLUTE_FORM.exec(target);
  if (!m) return target === '*' ? target : `/${target}`;
  const rest = target.slice(m[0].length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/**
 * The authority of an absolute-form target, without userinfo (`coder.example:8443`), as Go
 * sets `r.Host` from it; null for any other form, or when the authority is empty (Go then
 * keeps the Host header).
 *
 * @example
 * targetAuthority('http://user:pw@coder.example:8443/x') // => 'coder.example:8443'
 */
export function targetAuthority(target: string): string | null {
  if (target.charCodeAt(0) === 0x2f) return null; // origin form, the common case
  const m = ABSOLUTE_FORM.exec(target);
  if (!m) return null;
  const authority = m[0].slice(m[0].indexOf('//') + 2);
  const host = authority.slice(authority.lastIndexOf('@') + 1);
  return host === '' ? null : host;
}

const HEX = /^[0-9A-Fa-f]{2}$/;

/**
 * Go's `url.PathUnescape` (`plusIsSpace` false) and `url.QueryUnescape` (true): `%XX` must
 * be two hex digits, else Go reports an error (here: null). Node hands the target over as
 * latin1, one char per byte, and the result is compared with ASCII only.
 */
function goUnescape(s: string, plusIsSpace: boolean): string | null {
  const src = plusIsSpace ? s.replace(/\+/g, ' ') : s;
  if (!src.includes('%')) return src;
  const bytes: number[] = [];
  for (let i = 0; i < src.length; i++) {
    if (src.charCodeAt(i) !== 0x25) {
      bytes.push(src.charCodeAt(i) & 0xff);
      continue;
    }
    const hex = src.slice(i + 1, i + 3);
    if (!HEX.test(hex)) return null;
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes).toString('latin1');
}

/**
 * The path coderd routes on, or null when Go would refuse the target. coderd routes on the
 * decoded path (`r.URL.Path`, not the raw one) after its `singleSlashMW` collapses runs of
 * slashes (coderd/coderd.go, 2.34), so `//api/v2//…/reini%74` reaches the same handler as
 * the plain path.
 */
export function routePath(target: string): string | null {
  const origin = originForm(target);
  const q = origin.indexOf('?');
  const decoded = goUnescape(q === -1 ? origin : origin.slice(0, q), false);
  return decoded === null ? null : decoded.replace(/\/+/g, '/');
}

/** The raw query of a target (after the first `?`), or '' when there is none. */
export function rawQuery(target: string): string {
  const q = target.indexOf('?');
  return q === -1 ? '' : target.slice(q + 1);
}

/** net/url's `defaultMaxParams`. */
const GO_MAX_QUERY_PARAMS = 10_000;

/**
 * `r.URL.Query().Get(key)` as Go computes it (net/url `parseQuery`, Go 1.17+): pairs are
 * split on `&` only; a pair holding `;` or a bad escape is skipped, not fatal; the first
 * value wins. `URLSearchParams` differs on exactly those points, so it is not used.
 */
export function goQueryGet(query: string, key: string): string | null {
  const pairs = query.split('&');
  // Go (1.24.12+/1.25.6+) refuses more than 10,000 parameters: Query() is then empty.
  if (pairs.length > GO_MAX_QUERY_PARAMS) return null;
  for (const pair of pairs) {
    if (pair === '' || pair.includes(';')) continue;
    const eq = pair.indexOf('=');
    const k = goUnescape(eq === -1 ? pair : pair.slice(0, eq), true);
    if (k !== key) continue;
    const v = goUnescape(eq === -1 ? '' : pair.slice(eq + 1), true);
    if (v !== null) return v;
  }
  return null;
}

const LOG_PATH_MAX = 200;

/**
 * A request path fit for a log line: no scheme, authority or userinfo, no query (queries
 * may carry session tokens), at most 200 characters, and anything outside printable ASCII
 * escaped, so a client cannot write credentials or forged text into the guard's logs.
 */
export function logPath(target: string | undefined): string {
  const origin = originForm(target ?? '');
  const q = origin.indexOf('?');
  const path = q === -1 ? origin : origin.slice(0, q);
  const cut = path.length > LOG_PATH_MAX ? `${path.slice(0, LOG_PATH_MAX)}…` : path;
  return escapeForLog(cut);
}

/** Escapes what is not printable ASCII as `\xNN` / `\u{N}`. */
export function escapeForLog(s: string): string {
  return s.replace(/[^\x20-\x7e]|\\/gu, (ch) => {
    const cp = ch.codePointAt(0) as number;
    return cp < 0x100 ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`;
  });
}

/**
 * An `Upgrade` header value fit for a log line: the protocol token when it looks like one
 * (`websocket`, `DERP`), else `other`; never the raw value.
 */
export function logUpgrade(value: string | undefined): string {
  if (value === undefined) return 'none';
  return /^[A-Za-z0-9._/-]{1,32}$/.test(value) ? value : 'other';
}
