import { describe, expect, it } from 'vitest';
import { describeConfig, loadConfig, OPTIONS, unknownVariables } from './index.js';

const base = { REINIT_GUARD_UPSTREAM: 'http://coder-upstream:8080', REINIT_GUARD_PG_URL: 'postgres://guard:pw@db:5432/coder' };

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const r = loadConfig(base);
    expect(r.ok && r.config).toMatchObject({
      listen: { host: '0.0.0.0', port: 8080 },
      adminListen: { host: '0.0.0.0', port: 9090 },
      mode: 'enforce',
      dbTimeoutMs: 2000,
      dbPoolSize: 4,
      passCacheTtlMs: 2000,
      forwardedHeaders: 'append',
    });
  });

  it('falls back to CODER_PG_CONNECTION_URL', () => {
    const r = loadConfig({ REINIT_GUARD_UPSTREAM: base.REINIT_GUARD_UPSTREAM, CODER_PG_CONNECTION_URL: 'postgres://c:pw@db/coder' });
    expect(r.ok && r.config.pgUrl).toBe('postgres://c:pw@db/coder');
  });

  it('takes the database as separate PG* variables when no URL is set and PGHOST is', () => {
    const r = loadConfig({
      REINIT_GUARD_UPSTREAM: base.REINIT_GUARD_UPSTREAM,
      PGHOST: 'postgres.db.svc',
      PGPORT: '6432',
      PGDATABASE: 'coder',
      PGUSER: 'reinit_guard',
      PGPASSWORD: 'topsecret',
      PGSSLMODE: 'require',
    });
    expect(r.ok, r.ok ? '' : r.problems.join('\n')).toBe(true);
    const config = r.ok ? r.config : undefined;
    expect(config?.pgUrl).toBeUndefined();
    expect(config?.pgParams).toEqual({ host: 'postgres.db.svc', port: 6432, database: 'coder', user: 'reinit_guard', password: 'topsecret', ssl: 'require' });
    const shown = describeConfig(config!).pg as string;
    expect(shown).toBe('postgres://reinit_guard:***@postgres.db.svc:6432/coder?sslmode=require (from PGHOST and the other PG* variables)');
    expect(shown).not.toContain('topsecret');
  });

  it("PG* defaults are libpq's: port 5432, sslmode prefer; disable turns TLS off", () => {
    const r = loadConfig({ REINIT_GUARD_UPSTREAM: base.REINIT_GUARD_UPSTREAM, PGHOST: 'db' });
    expect(r.ok && r.config.pgParams).toEqual({ host: 'db', port: 5432, database: undefined, user: undefined, password: undefined, ssl: 'prefer' });
    const off = loadConfig({ REINIT_GUARD_UPSTREAM: base.REINIT_GUARD_UPSTREAM, PGHOST: 'db', PGSSLMODE: 'disable' });
    expect(off.ok && off.config.pgParams?.ssl).toBe(false);
  });

  it('a URL wins over PG* variables', () => {
    const r = loadConfig({ ...base, PGHOST: 'elsewhere' });
    expect(r.ok && r.config.pgUrl).toBe(base.REINIT_GUARD_PG_URL);
    expect(r.ok && r.config.pgParams).toBeUndefined();
  });

  it('needs no database in mode off', () => {
    const r = loadConfig({ REINIT_GUARD_UPSTREAM: base.REINIT_GUARD_UPSTREAM, REINIT_GUARD_MODE: 'off' });
    expect(r.ok).toBe(true);
  });

  it.each([
    [{ REINIT_GUARD_UPSTREAM: undefined }, 'REINIT_GUARD_UPSTREAM is not set: set it to the base URL of coderd, e.g. http://coder-upstream:8080'],
    [{ REINIT_GUARD_UPSTREAM: 'ftp://x' }, 'REINIT_GUARD_UPSTREAM "ftp://x" is not valid: use the http:// or https:// base URL of coderd, e.g. http://coder-upstream:8080'],
    [{ REINIT_GUARD_UPSTREAM: 'http://coder/api' }, 'REINIT_GUARD_UPSTREAM "http://coder/api" is not valid: use a base URL without path, credentials, query or fragment'],
    [{ REINIT_GUARD_MODE: 'on' }, 'REINIT_GUARD_MODE "on" is not valid: use enforce, observe or off'],
    [{ REINIT_GUARD_DB_TIMEOUT: '2' }, 'REINIT_GUARD_DB_TIMEOUT "2" is not valid: use a positive duration such as 500ms, 2s or 1m'],
    // Below 1 ms a duration rounds to 0: no statement_timeout, a TTL that never expires.
    [{ REINIT_GUARD_DB_TIMEOUT: '0.4ms' }, 'REINIT_GUARD_DB_TIMEOUT "0.4ms" is not valid: use at least 1ms'],
    [{ REINIT_GUARD_PASS_CACHE_TTL: '0.4ms' }, 'REINIT_GUARD_PASS_CACHE_TTL "0.4ms" is not valid: use at least 1ms'],
    [{ REINIT_GUARD_PEEK_TIMEOUT: '0.0001s' }, 'REINIT_GUARD_PEEK_TIMEOUT "0.0001s" is not valid: use at least 1ms'],
    [{ REINIT_GUARD_LISTEN: '8080' }, 'REINIT_GUARD_LISTEN "8080" is not valid: use host:port, for example 0.0.0.0:8080 or [::]:8080'],
    [{ REINIT_GUARD_LISTEN: '0.0.0.0:70000' }, 'REINIT_GUARD_LISTEN "0.0.0.0:70000" is not valid: use host:port, for example 0.0.0.0:8080 or [::]:8080'],
    [{ REINIT_GUARD_DB_POOL_SIZE: '0' }, 'REINIT_GUARD_DB_POOL_SIZE "0" is not valid: use a whole number from 1 to 64'],
    [{ REINIT_GUARD_PASS_CACHE_TTL: '1m' }, 'REINIT_GUARD_PASS_CACHE_TTL "1m" is not valid: use at most 10s: the claim build stops being the latest as soon as the user builds again'],
    [{ REINIT_GUARD_ADMIN_LISTEN: '0.0.0.0:8080' }, `REINIT_GUARD_ADMIN_LISTEN "0.0.0.0:8080" is not valid: use a port other than REINIT_GUARD_LISTEN's`],
    [{ REINIT_GUARD_PG_URL: undefined }, "REINIT_GUARD_PG_URL is not set: set either it (or CODER_PG_CONNECTION_URL) to coderd's PostgreSQL URL, or PGHOST (with PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PGSSLMODE as needed), or set REINIT_GUARD_MODE=off"],
    // PGUSER alone is not a database: PGHOST is what says "separate variables".
    [{ REINIT_GUARD_PG_URL: undefined, PGUSER: 'guard' }, "REINIT_GUARD_PG_URL is not set: set either it (or CODER_PG_CONNECTION_URL) to coderd's PostgreSQL URL, or PGHOST (with PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PGSSLMODE as needed), or set REINIT_GUARD_MODE=off"],
    [{ REINIT_GUARD_PG_URL: undefined, PGHOST: 'db', PGPORT: 'five' }, 'PGPORT "five" is not valid: use a port number from 1 to 65535'],
    [{ REINIT_GUARD_PG_URL: undefined, PGHOST: 'db', PGPORT: '70000' }, 'PGPORT "70000" is not valid: use a port number from 1 to 65535'],
    [{ REINIT_GUARD_PG_URL: undefined, PGHOST: 'db', PGSSLMODE: 'verify-ca' }, 'PGSSLMODE "verify-ca" is not valid: use disable, allow, prefer, require, verify-full (verify-full checks the certificate and the host name)'],
    [{ REINIT_GUARD_PG_URL: undefined, PGHOST: 'db1,db2' }, 'PGHOST "db1,db2" is not valid: use one host name or IP address'],
    [{ REINIT_GUARD_PG_URL: 'mysql://u:topsecret@db/x' }, 'REINIT_GUARD_PG_URL "mysql://u:***@db/x" is not valid: use a postgres:// or postgresql:// URL, e.g. postgres://user:pw@host:5432/coder?sslmode=disable'],
  ])('reports %o', (override, message) => {
    const r = loadConfig({ ...base, ...override });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.problems).toEqual([message]);
  });

  it('reports every problem at once, and never a password', () => {
    const r = loadConfig({
      REINIT_GUARD_UPSTREAM: 'nope',
      REINIT_GUARD_PG_URL: 'postgres://u:topsecret@db:notaport/x',
      REINIT_GUARD_MODE: 'on',
      REINIT_GUARD_DB_TIMEOUT: 'soon',
    });
    expect(r.ok).toBe(false);
    const problems = r.ok ? [] : r.problems;
    expect(problems.map((p) => p.split(' ')[0])).toEqual(['REINIT_GUARD_UPSTREAM', 'REINIT_GUARD_PG_URL', 'REINIT_GUARD_MODE', 'REINIT_GUARD_DB_TIMEOUT']);
    expect(problems.join('\n')).not.toContain('topsecret');
  });

  it('every option has a name, a doc line and a parser that accepts its default', () => {
    for (const o of OPTIONS) {
      expect(o.env).toMatch(/^REINIT_GUARD_[A-Z_]+$/);
      expect(o.doc.length).toBeGreaterThan(5);
      if (o.default !== undefined) expect(o.parse(o.default).ok).toBe(true);
    }
  });
});

describe('unknown REINIT_GUARD_* variables', () => {
  it.each([
    ['REINIT_GUARD_RETIRE', 'REINIT_GUARD_RETIRE_AT'],
    ['REINIT_GUARD_LOGLEVEL', 'REINIT_GUARD_LOG_LEVEL'],
    ['REINIT_GUARD_DB_URL', 'REINIT_GUARD_PG_URL'],
    ['REINIT_GUARD_MDOE', 'REINIT_GUARD_MODE'],
    ['REINIT_GUARD_UPSTREAM_URL', 'REINIT_GUARD_UPSTREAM'],
    ['REINIT_GUARD_FROBNICATE', null],
  ])('%s is reported, with its likely meaning %s', (variable, didYouMean) => {
    expect(unknownVariables({ REINIT_GUARD_UPSTREAM: 'http://c:8080', [variable]: 'x' })).toEqual([{ variable, didYouMean }]);
  });

  it('leaves known variables, other prefixes and Kubernetes service links alone', () => {
    expect(
      unknownVariables({
        REINIT_GUARD_MODE: 'observe',
        CODER_PG_CONNECTION_URL: 'postgres://x',
        REINIT_GUARDIAN: 'x',
        REINIT_GUARD_SERVICE_HOST: '10.0.0.1',
        REINIT_GUARD_SERVICE_PORT_HTTP: '8080',
        REINIT_GUARD_PORT: 'tcp://10.0.0.1:8080',
        REINIT_GUARD_PORT_8080_TCP_ADDR: '10.0.0.1',
      }),
    ).toEqual([]);
  });
});

describe('REINIT_GUARD_RETIRE_AT', () => {
  it('defaults to the first release proven fixed', () => {
    const r = loadConfig(base);
    expect(r.ok && r.config.retireAt).toBe('>=2.35.1');
  });
  it('is switched off by an explicit empty value', () => {
    const r = loadConfig({ ...base, REINIT_GUARD_RETIRE_AT: '' });
    expect(r.ok && r.config.retireAt).toBeUndefined();
  });
  it('takes a range of the operator\'s own', () => {
    const r = loadConfig({ ...base, REINIT_GUARD_RETIRE_AT: '>=2.34.6' });
    expect(r.ok && r.config.retireAt).toBe('>=2.34.6');
  });
});
