import postgres from 'postgres';
import type { PgParams } from '../config/options.js';

/** The postgres.js client type the guard's SQL module receives. */
export type Sql = postgres.Sql;

/** How the guard's database session is opened. */
export interface DbClientOptions {
  /** A postgres:// URL; or, without one, `params` (the PG* variables as the config read them). */
  url?: string | undefined;
  params?: PgParams | undefined;
  poolSize: number;
  /** Per-statement deadline enforced by the server (statement_timeout). */
  statementTimeoutMs: number;
  connectTimeoutMs: number;
}

/** The application_name coderd's DBAs see in pg_stat_activity. */
export const APPLICATION_NAME = 'coder-reinit-guard';

/**
 * Creates the one database client of the process. The session is read-only by
 * construction: every transaction defaults to READ ONLY, statements are cut by the server
 * at the decision deadline, and the pool is small so the guard can never crowd coderd.
 */
export function createDbClient(opts: DbClientOptions): Sql {
  // With no URL, every part is passed explicitly, so what the config validated (and the
  // PGSSLMODE postgres.js does not read) is what connects.
  const p = opts.url ? undefined : opts.params;
  return postgres(opts.url as string, {
    ...(p && { host: p.host, port: p.port, database: p.database, user: p.user, pass: p.password, ssl: p.ssl }),
    max: opts.poolSize,
    connect_timeout: Math.max(1, Math.ceil(opts.connectTimeoutMs / 1000)),
    idle_timeout: 300,
    max_lifetime: 60 * 30,
    // We read no arrays or custom types; skipping the type fetch saves a round trip on
    // every new connection and keeps the role's needs to the tables it queries.
    fetch_types: false,
    onnotice: () => {},
    connection: {
      application_name: APPLICATION_NAME,
      default_transaction_read_only: true,
      statement_timeout: opts.statementTimeoutMs,
    },
  });
}
