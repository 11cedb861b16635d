import os from 'node:os';
import { isValidRange } from '../lifecycle/retirement.js';
import {
  parseBytes,
  parseDuration,
  parseEnum,
  parseHostPort,
  parseInteger,
  parsePgUrl,
  parseUpstream,
  readKeyFile,
  readPemFile,
  type HostPort,
  type Parsed,
} from './parsers.js';

/** What the guard does with `/reinit` streams. */
export const MODES = ['enforce', 'observe', 'off'] as const;
export type Mode = (typeof MODES)[number];

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const FORWARDED_HEADER_MODES = ['append', 'off'] as const;
export type ForwardedHeaderMode = (typeof FORWARDED_HEADER_MODES)[number];

/** The validated configuration the guard runs with. */
export interface Config {
  upstream: URL;
  pgUrl: string | undefined;
  /**
   * The database as separate libpq variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD,
   * PGSSLMODE), read when no URL is set and PGHOST is: a Helm chart can then take the password
   * from a Secret key of its own.
   */
  pgParams: PgParams | undefined;
  listen: HostPort;
  adminListen: HostPort;
  mode: Mode;
  dbTimeoutMs: number;
  dbConnectTimeoutMs: number;
  dbPoolSize: number;
  /** Most workspaces one decision statement asks about. */
  dbBatchSize: number;
  /** While lookups keep arriving, at most one statement per this window (or per full batch). */
  dbBatchWindowMs: number;
  /** How often the verdict cache is filled with every "claim already handled" workspace; 0: never. */
  cacheWarmIntervalMs: number;
  /** The listen(2) backlog of the proxy listener(s); the kernel caps it at net.core.somaxconn. */
  listenBacklog: number;
  peekTimeoutMs: number;
  peekMaxBytes: number;
  cacheSize: number;
  suppressCacheTtlMs: number;
  passCacheTtlMs: number;
  /** How long a held /reinit stream is kept before it is ended so the agent asks again. */
  holdMaxMs: number;
  holdRecheckMs: number;
  logLevel: LogLevel;
  forwardedHeaders: ForwardedHeaderMode;
  headerTimeoutMs: number;
  upstreamConnectTimeoutMs: number;
  /** PEM bundle trusted for an https upstream, read at startup. */
  upstreamCa: string | undefined;
  /** Proxy worker processes; 1 runs everything in one process. */
  workers: number;
  /** How long in-flight requests may take to finish on SIGTERM. */
  shutdownGraceMs: number;
  shutdownDelayMs: number;
  accessLog: boolean;
  /** Semver range of fixed coderd versions at which the guard stops intervening. */
  retireAt: string | undefined;
  /** How often coderd's buildinfo is read. */
  retirePollMs: number;
  /** How often coderd and the database are probed (information, never readiness). */
  probeIntervalMs: number;
  /** A second, TLS listener for proxied traffic (clients that reached coderd on 443). */
  tlsListen: HostPort | undefined;
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  /** Name coderd's certificate is verified against (and sent as SNI), if not the URL's host. */
  upstreamServername: string | undefined;
}

/** The database connection given as separate libpq variables instead of a URL. */
export interface PgParams {
  host: string;
  port: number;
  database: string | undefined;
  user: string | undefined;
  password: string | undefined;
  /** PGSSLMODE as postgres.js takes it: `disable` is false; unset is libpq's default, prefer. */
  ssl: false | 'allow' | 'prefer' | 'require' | 'verify-full';
}

/** The libpq variables read when REINIT_GUARD_PG_URL (and CODER_PG_CONNECTION_URL) is unset. */
export const PG_ENV = ['PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER', 'PGPASSWORD', 'PGSSLMODE'] as const;
export const PG_SSLMODES = ['disable', 'allow', 'prefer', 'require', 'verify-full'] as const;

export const DEFAULT_LISTEN = '0.0.0.0:8080';
export const DEFAULT_ADMIN_LISTEN = '0.0.0.0:9090';
export const DEFAULT_MODE: Mode = 'enforce';
export const DEFAULT_DB_TIMEOUT = '2s';
export const DEFAULT_DB_CONNECT_TIMEOUT = '5s';
export const DEFAULT_DB_POOL_SIZE = '4';
export const DEFAULT_DB_BATCH_SIZE = '1000';
export const DEFAULT_DB_BATCH_WINDOW = '250ms';
export const DEFAULT_CACHE_WARM_INTERVAL = '10m';
export const DEFAULT_LISTEN_BACKLOG = '65535';
export const DEFAULT_PEEK_TIMEOUT = '5s';
export const DEFAULT_PEEK_MAX_BYTES = '64KiB';
export const DEFAULT_CACHE_SIZE = '100000';
export const DEFAULT_SUPPRESS_CACHE_TTL = '24h';
export const DEFAULT_PASS_CACHE_TTL = '2s';
export const DEFAULT_HOLD_MAX = '60s';
export const DEFAULT_HOLD_RECHECK = '1s';
/** A "claim build is latest" verdict goes stale as soon as the user builds again. */
export const MAX_PASS_CACHE_TTL_MS = 10_000;
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';
export const DEFAULT_FORWARDED_HEADERS: ForwardedHeaderMode = 'append';
export const DEFAULT_HEADER_TIMEOUT = '30s';
export const DEFAULT_UPSTREAM_CONNECT_TIMEOUT = '10s';
export const DEFAULT_WORKERS = '1';
/**
 * The first coderd release proven to carry the fix (coder 2.35.1, read from its sources and
 * run in the real-coderd suite). 2.34.x releases after 2.34.3 may carry the 2.34 backport
 * (coder#26644): their release notes say; an operator adds them explicitly.
 */
export const DEFAULT_RETIRE_AT = '>=2.35.1';
export const DEFAULT_SHUTDOWN_GRACE = '10s';
/**
 * Kubernetes takes a terminating pod out of its EndpointSlices at once, but every node's
 * kube-proxy, ingress controllers and cloud load balancers apply that asynchronously: a few
 * seconds typically, longer for some cloud load balancers. Connections sent meanwhile must
 * still be served.
 */
export const DEFAULT_SHUTDOWN_DELAY = '10s';
export const DEFAULT_RETIRE_POLL = '1m';
export const DEFAULT_PROBE_INTERVAL = '10s';

/** A duration, or 0 (with or without a unit: the chart writes `0s`) / off for "never". */
const parseDurationOrOff = (raw: string): Parsed<number> =>
  raw.trim() === 'off' || /^0+(\.0+)?(ms|s|m|h)?$/.test(raw.trim()) ? { ok: true, value: 0 } : parseDuration(raw).ok ? parseDuration(raw) : { ok: false, rule: 'use a duration such as 100ms, 10m or 1h, or 0 (off)' };

/** on or off, as a boolean. */
const parseOnOff = (raw: string): Parsed<boolean> => {
  const p = parseEnum(raw, ['on', 'off'] as const);
  return p.ok ? { ok: true, value: p.value === 'on' } : p;
};

const parseServername = (raw: string): Parsed<string> =>
  /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/i.test(raw.trim()) ? { ok: true, value: raw.trim() } : { ok: false, rule: 'use a DNS name such as coder.example.com' };

const parseRange = (raw: string): Parsed<string> =>
  isValidRange(raw.trim()) ? { ok: true, value: raw.trim() } : { ok: false, rule: 'use a semver range such as >=2.35.1, or >=2.34.6 <2.35.0 || >=2.35.1' };

/** "auto" (one per CPU) or a whole number of workers. */
const parseWorkers = (raw: string): Parsed<number> =>
  raw.trim() === 'auto' ? { ok: true, value: Math.max(1, os.availableParallelism()) } : parseInteger(raw, 1, 64).ok ? parseInteger(raw, 1, 64) : { ok: false, rule: 'use auto or a whole number from 1 to 64' };

/** One environment variable: its documentation, default and parser. */
export interface OptionSpec<K extends keyof Config = keyof Config> {
  env: string;
  key: K;
  doc: string;
  /** Default as the operator would write it; absent means required or unset. */
  default?: string;
  /** Never echo the value in a message (it may carry a password). */
  secret?: boolean;
  /**
   * An explicit empty value switches the setting off instead of selecting the default
   * (a default that is on, which an operator must be able to turn off).
   */
  emptyMeansOff?: boolean;
  parse: (raw: string) => Parsed<Config[K]>;
}

const option = <K extends keyof Config>(spec: OptionSpec<K>): OptionSpec<K> => spec;

const maxPassTtl = (raw: string): Parsed<number> => {
  const d = parseDuration(raw);
  return d.ok && d.value > MAX_PASS_CACHE_TTL_MS ? { ok: false, rule: 'use at most 10s: the claim build stops being the latest as soon as the user builds again' } : d;
};

/** Every option, in the order docs/configuration.md documents them. */
export const OPTIONS: readonly OptionSpec[] = [
  option({ env: 'REINIT_GUARD_UPSTREAM', key: 'upstream', doc: 'coderd base URL (http or https); required', parse: parseUpstream }),
  option({
    env: 'REINIT_GUARD_PG_URL',
    key: 'pgUrl',
    doc: "PostgreSQL URL of coderd's database; falls back to CODER_PG_CONNECTION_URL; required unless the mode is off or the database is given as PGHOST (with PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE)",
    secret: true,
    parse: parsePgUrl,
  }),
  option({ env: 'REINIT_GUARD_LISTEN', key: 'listen', doc: 'host:port for proxied traffic', default: DEFAULT_LISTEN, parse: parseHostPort }),
  option({ env: 'REINIT_GUARD_ADMIN_LISTEN', key: 'adminListen', doc: 'host:port for /healthz, /readyz and /metrics', default: DEFAULT_ADMIN_LISTEN, parse: parseHostPort }),
  option({ env: 'REINIT_GUARD_MODE', key: 'mode', doc: 'enforce, observe or off', default: DEFAULT_MODE, parse: (r) => parseEnum(r, MODES) }),
  option({ env: 'REINIT_GUARD_DB_TIMEOUT', key: 'dbTimeoutMs', doc: "deadline for one decision's database work", default: DEFAULT_DB_TIMEOUT, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_DB_CONNECT_TIMEOUT', key: 'dbConnectTimeoutMs', doc: 'deadline for opening one database connection', default: DEFAULT_DB_CONNECT_TIMEOUT, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_DB_POOL_SIZE', key: 'dbPoolSize', doc: 'most database connections the guard opens', default: DEFAULT_DB_POOL_SIZE, parse: (r) => parseInteger(r, 1, 64) }),
  option({ env: 'REINIT_GUARD_DB_BATCH_SIZE', key: 'dbBatchSize', doc: 'most workspaces one decision statement asks about: a reconnect storm is decided in batches, not one statement per agent', default: DEFAULT_DB_BATCH_SIZE, parse: (r) => parseInteger(r, 1, 10_000) }),
  option({ env: 'REINIT_GUARD_DB_BATCH_WINDOW', key: 'dbBatchWindowMs', doc: 'while lookups keep arriving, at most one statement per window (a full batch goes at once); a lookup after a quiet spell goes at once; 0 sends every lookup as soon as a connection is free', default: DEFAULT_DB_BATCH_WINDOW, parse: parseDurationOrOff }),
  option({ env: 'REINIT_GUARD_CACHE_WARM_INTERVAL', key: 'cacheWarmIntervalMs', doc: 'how often the verdict cache is filled with every workspace whose claim was already handled (at start, then at this interval; one statement per 2,000 workspaces, one connection); 0 turns it off', default: DEFAULT_CACHE_WARM_INTERVAL, parse: parseDurationOrOff }),
  option({ env: 'REINIT_GUARD_LISTEN_BACKLOG', key: 'listenBacklog', doc: 'accept queue of the proxy listener: room for a whole fleet reconnecting at once. The kernel caps each socket at net.core.somaxconn (4096 by default); on Node 22.12 and later one process then listens on as many SO_REUSEPORT sockets as make up the rest (at most 16), each with a queue of its own', default: DEFAULT_LISTEN_BACKLOG, parse: (r) => parseInteger(r, 1, 1_048_576) }),
  option({ env: 'REINIT_GUARD_PEEK_TIMEOUT', key: 'peekTimeoutMs', doc: 'how long to wait for the first SSE event to complete once coderd sent headers; past it the stream passes unchanged', default: DEFAULT_PEEK_TIMEOUT, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_PEEK_MAX_BYTES', key: 'peekMaxBytes', doc: 'most bytes held while reading the first SSE event; past it the stream passes unchanged', default: DEFAULT_PEEK_MAX_BYTES, parse: (r) => parseBytes(r, 1024, 16 * 1024 * 1024) }),
  option({ env: 'REINIT_GUARD_CACHE_SIZE', key: 'cacheSize', doc: 'most workspaces whose verdict is cached', default: DEFAULT_CACHE_SIZE, parse: (r) => parseInteger(r, 0, 10_000_000) }),
  option({ env: 'REINIT_GUARD_SUPPRESS_CACHE_TTL', key: 'suppressCacheTtlMs', doc: 'how long a "claim already handled" verdict is cached (it is final)', default: DEFAULT_SUPPRESS_CACHE_TTL, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_PASS_CACHE_TTL', key: 'passCacheTtlMs', doc: 'how long a "claim build is the latest" verdict is cached (at most 10s)', default: DEFAULT_PASS_CACHE_TTL, parse: maxPassTtl }),
  option({ env: 'REINIT_GUARD_HOLD_MAX', key: 'holdMaxMs', doc: 'how long a stream held back (claim build not created yet) is kept before it is ended cleanly, so the agent reconnects and is judged again', default: DEFAULT_HOLD_MAX, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_HOLD_RECHECK', key: 'holdRecheckMs', doc: 'how often a held stream asks the database (bypassing the cache) whether the claim build exists; once it does, the stream is ended cleanly so the agent reconnects and gets coderd\'s genuine event', default: DEFAULT_HOLD_RECHECK, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_LOG_LEVEL', key: 'logLevel', doc: 'debug, info, warn or error', default: DEFAULT_LOG_LEVEL, parse: (r) => parseEnum(r, LOG_LEVELS) }),
  option({ env: 'REINIT_GUARD_ACCESS_LOG', key: 'accessLog', doc: 'on: one JSON line per proxied request (method, path without its query, status, origin, duration, upstream time, bytes in and out; never a header, cookie, token or query value); off: none', default: 'off', parse: parseOnOff }),
  option({ env: 'REINIT_GUARD_FORWARDED_HEADERS', key: 'forwardedHeaders', doc: 'append: add the client to X-Forwarded-For and set X-Forwarded-Proto/Host if absent; off: forward them as received', default: DEFAULT_FORWARDED_HEADERS, parse: (r) => parseEnum(r, FORWARDED_HEADER_MODES) }),
  option({ env: 'REINIT_GUARD_HEADER_TIMEOUT', key: 'headerTimeoutMs', doc: 'how long a client may take to send its request headers (slow-client protection); streams and bodies have no deadline', default: DEFAULT_HEADER_TIMEOUT, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_UPSTREAM_CONNECT_TIMEOUT', key: 'upstreamConnectTimeoutMs', doc: 'deadline for opening a connection to coderd; past it the client gets 504', default: DEFAULT_UPSTREAM_CONNECT_TIMEOUT, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_UPSTREAM_CA_FILE', key: 'upstreamCa', doc: 'PEM file of CA certificates to trust for an https upstream, in addition to the system ones', parse: readPemFile }),
  option({ env: 'REINIT_GUARD_WORKERS', key: 'workers', doc: 'proxy worker processes (auto: one per CPU); verdicts, the database pool and the admin port stay in one primary', default: DEFAULT_WORKERS, parse: parseWorkers }),
  option({ env: 'REINIT_GUARD_SHUTDOWN_GRACE', key: 'shutdownGraceMs', doc: 'on SIGTERM, how long in-flight requests may take to finish before streams and tunnels are closed', default: DEFAULT_SHUTDOWN_GRACE, parse: parseDurationOrOff }),
  option({ env: 'REINIT_GUARD_SHUTDOWN_DELAY', key: 'shutdownDelayMs', doc: 'on SIGTERM, how long the guard reports not ready (503 on /readyz) while it keeps accepting and serving, before it drains: the time Kubernetes, kube-proxy and load balancers take to stop sending it new connections (a few seconds typically, more for some cloud load balancers). SIGINT skips it', default: DEFAULT_SHUTDOWN_DELAY, parse: parseDurationOrOff }),
  option({ env: 'REINIT_GUARD_RETIRE_AT', key: 'retireAt', doc: "semver range of coderd versions that carry the fix; when coderd's buildinfo matches, the guard behaves as off and says it can be removed. The default is the first release proven fixed; a 2.34.x after 2.34.3 may carry the backport (coder#26644): check its release notes, then widen the range (e.g. >=2.34.6). An explicit empty value switches retirement off", default: DEFAULT_RETIRE_AT, emptyMeansOff: true, parse: parseRange }),
  option({ env: 'REINIT_GUARD_RETIRE_POLL', key: 'retirePollMs', doc: "how often coderd's /api/v2/buildinfo is read (for the version in metrics and retirement)", default: DEFAULT_RETIRE_POLL, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_PROBE_INTERVAL', key: 'probeIntervalMs', doc: 'how often coderd and the database are probed for /readyz, coder_reinit_guard_dependency_up and the log (never for readiness)', default: DEFAULT_PROBE_INTERVAL, parse: parseDuration }),
  option({ env: 'REINIT_GUARD_TLS_LISTEN', key: 'tlsListen', doc: 'host:port of an additional TLS listener for proxied traffic (needs REINIT_GUARD_TLS_CERT_FILE and REINIT_GUARD_TLS_KEY_FILE)', parse: parseHostPort }),
  option({ env: 'REINIT_GUARD_TLS_CERT_FILE', key: 'tlsCert', doc: 'PEM certificate chain for the TLS listener', parse: readPemFile }),
  option({ env: 'REINIT_GUARD_TLS_KEY_FILE', key: 'tlsKey', doc: 'PEM private key for the TLS listener', parse: readKeyFile }),
  option({ env: 'REINIT_GUARD_UPSTREAM_SERVERNAME', key: 'upstreamServername', doc: "name to verify an https upstream's certificate against and send as SNI, when it differs from the upstream URL's host", parse: parseServername }),
] as OptionSpec[];
