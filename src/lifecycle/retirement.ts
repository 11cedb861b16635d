import semver from 'semver';
import type { Logger } from '../observability/log.js';
import type { Upstream } from '../proxy/upstream.js';

/**
 * What the guard knows about coderd's version, and whether that version carries the fix
 * (REINIT_GUARD_RETIRE_AT), in which case the guard stops intervening.
 */
export interface RetirementState {
  coderdVersion: string | null;
  retired: boolean;
}

/**
 * Whether a coderd version (as `/api/v2/buildinfo` reports it, e.g. "v2.34.5+abc1234")
 * satisfies the retirement range. Build metadata and the leading "v" are ignored;
 * anything unparseable never retires the guard.
 *
 * @example
 * versionRetires('v2.34.6+0a1b2c3', '>=2.34.6') // => true
 */
export function versionRetires(version: string, range: string): boolean {
  const parsed = semver.parse(version.trim().replace(/^v/, ''));
  return parsed !== null && semver.satisfies(parsed.version, range, { includePrerelease: false });
}

/** Validates a retirement range as configuration. */
export const isValidRange = (range: string): boolean => semver.validRange(range) !== null;

/** What GET /api/v2/buildinfo gave: coderd's status and version, or the network error. */
export type Buildinfo = { ok: true; status: number; version: string | null } | { ok: false; code: string };

/**
 * Reads coderd's /api/v2/buildinfo through the upstream pool (same TLS settings as proxied
 * traffic). Used for readiness (any answer below 500) and for coderd's version.
 */
export function requestBuildinfo(upstream: Upstream, timeoutMs: number): Promise<Buildinfo> {
  return new Promise((resolve) => {
    const req = upstream.request({
      protocol: upstream.url.protocol,
      hostname: upstream.hostname,
      port: upstream.url.port || undefined,
      path: '/api/v2/buildinfo',
      agent: upstream.controlAgent,
      timeout: timeoutMs,
      headers: { Accept: 'application/json' },
    });
    req.once('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        if (body.length < 64 * 1024) body += c;
      });
      res.on('end', () => {
        let version: string | null = null;
        try {
          const v = (JSON.parse(body) as { version?: unknown }).version;
          if (res.statusCode === 200 && typeof v === 'string') version = v;
        } catch {
          // Not JSON: reachable, version unknown.
        }
        resolve({ ok: true, status: res.statusCode ?? 0, version });
      });
      res.on('error', () => resolve({ ok: false, code: 'ECONNRESET' }));
    });
    req.once('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.once('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, code: err.code ?? err.message }));
    req.end();
  });
}

/** coderd's version from buildinfo, or null if it cannot be read. */
export const fetchCoderdVersion = async (upstream: Upstream, timeoutMs = 5000): Promise<string | null> => {
  const r = await requestBuildinfo(upstream, timeoutMs);
  return r.ok ? r.version : null;
};

/** Options of the retirement watcher. */
export interface RetirementOptions {
  upstream: Upstream;
  /** Semver range of fixed coderd versions; null: never retire, only report the version. */
  retireAt: string | null;
  pollMs: number;
  log: Logger;
  onChange: (state: RetirementState) => void;
}

/**
 * Polls coderd's buildinfo. Once coderd reports a version in `retireAt`, the guard behaves
 * as mode off and says once, loudly, that it can be removed; if coderd is rolled back, it
 * resumes. Returns a stop function.
 */
export function watchRetirement(opts: RetirementOptions): { state: () => RetirementState; stop: () => void } {
  let state: RetirementState = { coderdVersion: null, retired: false };
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const poll = async () => {
    const version = await fetchCoderdVersion(opts.upstream);
    if (stopped) return;
    if (version !== null) {
      const retired = opts.retireAt !== null && versionRetires(version, opts.retireAt);
      if (retired && !state.retired) {
        opts.log.warn('coderd reports a fixed version: the guard stopped intervening and can be removed', { coderd_version: version, retire_at: opts.retireAt });
      } else if (!retired && state.retired) {
        opts.log.warn('coderd no longer reports a fixed version: the guard intervenes again', { coderd_version: version, retire_at: opts.retireAt });
      }
      if (version !== state.coderdVersion || retired !== state.retired) {
        state = { coderdVersion: version, retired };
        opts.onChange(state);
      }
    }
    timer = setTimeout(() => void poll(), opts.pollMs);
    timer.unref();
  };
  void poll();
  return {
    state: () => state,
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
