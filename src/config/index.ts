import { closest } from './suggest.js';
import { readFileSync } from 'node:fs';
import { OPTIONS, PG_SSLMODES, type Config, type PgParams } from './options.js';
import { redactUrl } from './parsers.js';

export * from './options.js';
export type { HostPort } from './parsers.js';

/** The result of reading configuration: a config, or every problem found. */
export type ConfigResult = { ok: true; config: Config } | { ok: false; problems: string[] };

type Env = Record<string, string | undefined>;

/** The legacy variable the coder Helm chart already provides to coderd. */
export const CODER_PG_URL_ENV = 'CODER_PG_CONNECTION_URL';

/**
 * Reads and validates the guard's configuration from the environment. Every problem is
 * reported, each phrased "VARIABLE value is not valid: rule", so an operator fixes them
 * all in one rollout; secret values are redacted in messages.
 *
 * @example
 * const r = loadConfig(process.env);
 * if (!r.ok) { console.error(r.problems.join('\n')); process.exit(2); }
 */
export function loadConfig(env: Env, opts: { upstreamRequired?: boolean } = {}): ConfigResult {
  const problems: string[] = [];
  const out: Partial<Record<keyof Config, unknown>> = {};

  for (const spec of OPTIONS) {
    let source = spec.env;
    let raw = env[spec.env];
    if ((raw === undefined || raw === '') && spec.key === 'pgUrl' && env[CODER_PG_URL_ENV]) {
      source = CODER_PG_URL_ENV;
      raw = env[CODER_PG_URL_ENV];
    }
    if (raw === '' && spec.emptyMeansOff) continue;
    if (raw === undefined || raw === '') raw = spec.default;
    if (raw === undefined) continue;
    const parsed = spec.parse(raw);
    if (parsed.ok) {
      out[spec.key] = parsed.value;
    } else {
      const shown = spec.secret ? redactUrl(raw) : raw;
      problems.push(`${source} ${JSON.stringify(shown)} is not valid: ${parsed.rule}`);
    }
  }

  if (opts.upstreamRequired !== false && out.upstream === undefined && !problems.some((p) => p.startsWith('REINIT_GUARD_UPSTREAM '))) {
    problems.push('REINIT_GUARD_UPSTREAM is not set: set it to the base URL of coderd, e.g. http://coder-upstream:8080');
  }
  const pgProblem = problems.some((p) => p.startsWith('REINIT_GUARD_PG_URL ') || p.startsWith(`${CODER_PG_URL_ENV} `));
  // No URL: the database may be given as separate libpq variables (PGHOST and the rest).
  if (out.pgUrl === undefined && !pgProblem && env.PGHOST) {
    const params = pgParamsFrom(env, problems);
    if (params) out.pgParams = params;
  }
  if (out.pgUrl === undefined && !env.PGHOST && out.mode !== 'off' && !pgProblem) {
    problems.push(
      `REINIT_GUARD_PG_URL is not set: set either it (or ${CODER_PG_URL_ENV}) to coderd's PostgreSQL URL, or PGHOST (with PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PGSSLMODE as needed), or set REINIT_GUARD_MODE=off`,
    );
  }
  const tlsSet = [out.tlsListen, out.tlsCert, out.tlsKey].filter((v) => v !== undefined).length;
  if (tlsSet > 0 && tlsSet < 3 && !problems.some((p) => /^REINIT_GUARD_TLS_/.test(p))) {
    problems.push('REINIT_GUARD_TLS_LISTEN is not valid without a certificate: set REINIT_GUARD_TLS_LISTEN, REINIT_GUARD_TLS_CERT_FILE and REINIT_GUARD_TLS_KEY_FILE together');
  }
  const listen = out.listen as Config['listen'] | undefined;
  const admin = out.adminListen as Config['adminListen'] | undefined;
  if (listen && admin && listen.port !== 0 && listen.port === admin.port && listen.host === admin.host) {
    problems.push(`REINIT_GUARD_ADMIN_LISTEN "${admin.host}:${admin.port}" is not valid: use a port other than REINIT_GUARD_LISTEN's`);
  }

  return problems.length ? { ok: false, problems } : { ok: true, config: out as Config };
}

/**
 * The database as separate libpq variables (read only when no URL is set and PGHOST is).
 * PGSSLMODE is checked here: postgres.js does not read it, and would take any other value
 * (`disable` included) as "use TLS".
 */
function pgParamsFrom(env: Env, problems: string[]): PgParams | undefined {
  const before = problems.length;
  const host = (env.PGHOST ?? '').trim();
  let port = 5432;
  if (env.PGPORT !== undefined && env.PGPORT !== '') {
    const n = /^\d+$/.test(env.PGPORT.trim()) ? Number(env.PGPORT.trim()) : NaN;
    if (Number.isInteger(n) && n >= 1 && n <= 65535) port = n;
    else problems.push(`PGPORT ${JSON.stringify(env.PGPORT)} is not valid: use a port number from 1 to 65535`);
  }
  let ssl: PgParams['ssl'] = 'prefer';
  const mode = (env.PGSSLMODE ?? '').trim();
  if (mode !== '') {
    if ((PG_SSLMODES as readonly string[]).includes(mode)) ssl = mode === 'disable' ? false : (mode as PgParams['ssl']);
    else problems.push(`PGSSLMODE ${JSON.stringify(mode)} is not valid: use ${PG_SSLMODES.join(', ')} (verify-full checks the certificate and the host name)`);
  }
  if (/[\s,/]/.test(host)) problems.push(`PGHOST ${JSON.stringify(host)} is not valid: use one host name or IP address`);
  if (problems.length > before) return undefined;
  const opt = (v: string | undefined) => (v === undefined || v === '' ? undefined : v);
  return { host, port, database: opt(env.PGDATABASE), user: opt(env.PGUSER), password: opt(env.PGPASSWORD), ssl };
}

/** How the database is shown in logs: never its password. */
export function describeDatabase(config: Pick<Config, 'pgUrl' | 'pgParams'>): string | null {
  if (config.pgUrl) return redactUrl(config.pgUrl);
  const p = config.pgParams;
  if (!p) return null;
  const user = p.user ? `${encodeURIComponent(p.user)}${p.password ? ':***' : ''}@` : '';
  const host = p.host.includes(':') ? `[${p.host}]` : p.host;
  return `postgres://${user}${host}:${p.port}/${encodeURIComponent(p.database ?? '')}?sslmode=${p.ssl === false ? 'disable' : p.ssl} (from PGHOST and the other PG* variables)`;
}

/**
 * Variables Kubernetes injects for a Service whose name maps to REINIT_GUARD (service links:
 * `REINIT_GUARD_SERVICE_HOST`, `REINIT_GUARD_PORT_8080_TCP_ADDR`, ...): not the operator's typos.
 */
const SERVICE_LINK = /^REINIT_GUARD_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$/;

/**
 * `REINIT_GUARD_*` variables the guard does not know, each with the known name it most
 * likely meant: a typo (`REINIT_GUARD_LOGLEVEL`) would otherwise be ignored without a word and
 * its default used.
 */
export function unknownVariables(env: Env): Array<{ variable: string; didYouMean: string | null }> {
  const prefix = 'REINIT_GUARD_';
  const known = OPTIONS.map((o) => o.env);
  const knownSet = new Set<string>(known);
  // Compared without the shared prefix, which would make every name look close.
  const suffixes = known.map((k) => k.slice(prefix.length));
  return Object.keys(env)
    .filter((name) => name.startsWith(prefix) && !knownSet.has(name) && !SERVICE_LINK.test(name))
    .sort()
    .map((variable) => {
      const near = closest(variable.slice(prefix.length), suffixes);
      return { variable, didYouMean: near === null ? null : prefix + near };
    });
}

/** A one-line summary of the configuration for the startup log, with secrets redacted. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    upstream: config.upstream.origin,
    pg: describeDatabase(config),
    listen: `${config.listen.host}:${config.listen.port}`,
    admin_listen: `${config.adminListen.host}:${config.adminListen.port}`,
    mode: config.mode,
    db_timeout_ms: config.dbTimeoutMs,
    db_pool_size: config.dbPoolSize,
    listen_backlog: effectiveBacklog(config.listenBacklog),
  };
}

/**
 * The accept queue the kernel actually grants: listen(2) silently caps the backlog at
 * net.core.somaxconn (per network namespace, so per pod). Logged at start so an operator
 * sees when the sysctl, not the option, is the limit.
 */
export function effectiveBacklog(requested: number): number {
  try {
    const cap = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
    return Number.isInteger(cap) && cap > 0 ? Math.min(requested, cap) : requested;
  } catch {
    return requested; // Not Linux: the kernel's own cap is unknown here.
  }
}
