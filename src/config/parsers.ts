import { readFileSync } from 'node:fs';

/**
 * Small value parsers for configuration. Each returns either `{ ok: true, value }` or
 * `{ ok: false, rule }`, where `rule` completes the sentence "... is not valid: <rule>".
 */

export type Parsed<T> = { ok: true; value: T } | { ok: false; rule: string };

const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const bad = (rule: string): Parsed<never> => ({ ok: false, rule });

/** A listen address: host and port. */
export interface HostPort {
  host: string;
  port: number;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses a Go-style duration ("2s", "500ms", "1.5s", "1m") into milliseconds, the same
 * notation Coder's own flags use, so operators do not have to learn a second one.
 */
export function parseDuration(raw: string): Parsed<number> {
  const rule = 'use a positive duration such as 500ms, 2s or 1m';
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(raw.trim());
  if (!m) return bad(rule);
  const ms = Number(m[1]) * DURATION_UNITS[m[2] as string]!;
  if (!(ms > 0) || !Number.isFinite(ms)) return bad(rule);
  // The guard works in whole milliseconds: 0.4ms would round to 0, which means "no limit"
  // to statement_timeout and "forever" to a cache TTL.
  return ms >= 1 ? ok(Math.round(ms)) : bad('use at least 1ms');
}

/** Parses "host:port", "[v6]:port" or ":port" (all interfaces). Port 0 picks a free port. */
export function parseHostPort(raw: string): Parsed<HostPort> {
  const rule = 'use host:port, for example 0.0.0.0:8080 or [::]:8080';
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]*)):(\d{1,5})$/.exec(raw.trim());
  if (!m) return bad(rule);
  const port = Number(m[3]);
  if (port > 65535) return bad(rule);
  const host = m[1] ?? (m[2] === '' ? '0.0.0.0' : (m[2] as string));
  return ok({ host, port });
}

/** Reads a PEM file that must hold a block matching `block` (described as `what`). */
function readPem(raw: string, block: RegExp, what: string): Parsed<string> {
  let text: string;
  try {
    text = readFileSync(raw.trim(), 'utf8');
  } catch (err) {
    return bad(`use a readable PEM file (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  return block.test(text) ? ok(text) : bad(`use a PEM file holding ${what}`);
}

/** Reads a PEM bundle of certificates (a CA bundle or a certificate chain). */
export const readPemFile = (raw: string): Parsed<string> => readPem(raw, /-----BEGIN CERTIFICATE-----/, 'at least one CERTIFICATE block');

/** Reads a PEM private key. Messages show the path only, never the key. */
export const readKeyFile = (raw: string): Parsed<string> => readPem(raw, /-----BEGIN [A-Z ]*PRIVATE KEY-----/, 'a PRIVATE KEY block');

/** Parses a whole number within [min, max]. */
export function parseInteger(raw: string, min: number, max: number): Parsed<number> {
  const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
  return Number.isSafeInteger(n) && n >= min && n <= max ? ok(n) : bad(`use a whole number from ${min} to ${max}`);
}

/** Parses a byte size: a whole number with an optional KiB/MiB suffix. */
export function parseBytes(raw: string, min: number, max: number): Parsed<number> {
  const m = /^(\d+)\s*(B|KiB|MiB)?$/.exec(raw.trim());
  const n = m ? Number(m[1]) * ({ B: 1, KiB: 1024, MiB: 1024 * 1024 }[m[2] ?? 'B'] as number) : NaN;
  return Number.isSafeInteger(n) && n >= min && n <= max
    ? ok(n)
    : bad(`use a size from ${min} to ${max} bytes, optionally with KiB or MiB (e.g. 64KiB)`);
}

/** Parses one of a fixed set of words. */
export function parseEnum<T extends string>(raw: string, allowed: readonly T[]): Parsed<T> {
  const v = raw.trim() as T;
  if (allowed.includes(v)) return ok(v);
  const list = allowed.length > 1 ? `${allowed.slice(0, -1).join(', ')} or ${allowed.at(-1)}` : allowed[0];
  return bad(`use ${list}`);
}

/** Parses coderd's base URL: http or https, no credentials, query or fragment. */
export function parseUpstream(raw: string): Parsed<URL> {
  const rule = 'use the http:// or https:// base URL of coderd, e.g. http://coder-upstream:8080';
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    return bad(rule);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return bad(rule);
  if (url.username || url.password || url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
    // coderd is always served at the root of its origin; a path here would be silently dropped.
    return bad('use a base URL without path, credentials, query or fragment');
  }
  return ok(url);
}

/** Parses a PostgreSQL URL (postgres:// or postgresql://). */
export function parsePgUrl(raw: string): Parsed<string> {
  const rule = 'use a postgres:// or postgresql:// URL, e.g. postgres://user:pw@host:5432/coder?sslmode=disable';
  try {
    const url = new URL(raw.trim());
    return url.protocol === 'postgres:' || url.protocol === 'postgresql:' ? ok(raw.trim()) : bad(rule);
  } catch {
    return bad(rule);
  }
}

/**
 * Shows a URL-ish value with any password replaced, so that configuration errors can
 * quote what the operator wrote without leaking a secret into logs.
 */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.password) url.password = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass|secret|token/i.test(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    // Not parseable: a password could be anywhere in it, so show nothing of it.
    return '<unparseable, not shown>';
  }
}
