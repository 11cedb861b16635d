import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { waitFor } from '../support/env.js';
import { spawnEntryPoint } from '../support/guard-process.js';
import { GUARD_VERSION } from '../../src/lifecycle/version.js';

describe('the guard process', () => {
  it('refuses an invalid configuration before listening, listing every problem', async () => {
    const port = await freePort();
    const { out, exited } = spawnEntryPoint({
      REINIT_GUARD_UPSTREAM: 'coder:8080',
      REINIT_GUARD_PG_URL: 'postgres://guard:s3cr3t-pw@db:5432/coder',
      REINIT_GUARD_MODE: 'on',
      REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
      REINIT_GUARD_DB_TIMEOUT: 'fast',
    });
    expect(await exited).toBe(2);
    expect(out.stderr).toContain('invalid configuration (3 problems)');
    expect(out.stderr).toContain('REINIT_GUARD_UPSTREAM "coder:8080" is not valid');
    expect(out.stderr).toContain('REINIT_GUARD_MODE "on" is not valid: use enforce, observe or off');
    expect(out.stderr).toContain('REINIT_GUARD_DB_TIMEOUT "fast" is not valid');
    expect(out.stderr + out.stdout).not.toContain('s3cr3t-pw');
    expect(out.stdout).toBe('');
  });

  it('starts, serves, and exits 0 on SIGTERM', async () => {
    const upstream = http.createServer((_req, res) => res.end('{"version":"v2.34.5"}'));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const [port, admin] = [await freePort(), await freePort()];
    const { child, out, exited } = spawnEntryPoint({
      REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      REINIT_GUARD_PG_URL: 'postgres://guard:s3cr3t-pw@127.0.0.1:1/coder',
      REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
    });
    try {
      await waitFor(() => out.stdout.includes('coder-reinit-guard started'), 15_000, 'the start line');
      const started = JSON.parse(out.stdout.split('\n')[0] as string) as Record<string, unknown>;
      expect(started).toMatchObject({ level: 'info', mode: 'enforce', pg: 'postgres://guard:***@127.0.0.1:1/coder' });
      expect(await (await fetch(`http://127.0.0.1:${admin}/healthz`)).json()).toEqual({ status: 'ok' });
      expect(await (await fetch(`http://127.0.0.1:${port}/api/v2/buildinfo`)).text()).toBe('{"version":"v2.34.5"}');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(out.stdout + out.stderr).not.toContain('s3cr3t-pw');
    } finally {
      child.kill('SIGKILL');
      upstream.close();
    }
  });

  it('on SIGTERM: not ready at once, yet every connection during the shutdown delay is served; then it drains and exits 0', async () => {
    const upstream = http.createServer((_req, res) => res.end('{"version":"v2.34.5"}'));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const [port, admin] = [await freePort(), await freePort()];
    const delayMs = 4000;
    const { child, out, exited } = spawnEntryPoint({
      REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      REINIT_GUARD_PG_URL: 'postgres://guard:pw@127.0.0.1:1/coder',
      REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
      REINIT_GUARD_SHUTDOWN_DELAY: `${delayMs}ms`,
    });
    /** One request on a new connection (as a load balancer that has not caught up sends it). */
    const request = () =>
      new Promise<string>((resolve) => {
        const req = http.get({ host: '127.0.0.1', port, path: '/api/v2/buildinfo', agent: false }, (res) => {
          res.resume();
          res.once('end', () => resolve(String(res.statusCode)));
        });
        req.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      });
    try {
      await waitFor(() => out.stdout.includes('coder-reinit-guard started'), 15_000, 'the start line');
      expect(await request()).toBe('200');
      child.kill('SIGTERM');
      await waitFor(() => out.stdout.includes('still serving while load balancers stop sending new connections'), 10_000, 'the delay to begin');
      const seen = performance.now();
      expect((await fetch(`http://127.0.0.1:${admin}/readyz`)).status).toBe(503);
      // Every 50 ms a new connection, for the first half of the delay (the delay began before
      // its log line was read, so all of these fall inside it, whatever the machine's load).
      const during: string[] = [];
      while (performance.now() - seen < delayMs / 2) {
        during.push(await request());
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(during.length).toBeGreaterThan(5);
      expect(during.filter((s) => s !== '200')).toEqual([]);
      expect(await exited).toBe(0);
      expect(out.stdout).toContain('"msg":"draining"');
    } finally {
      child.kill('SIGKILL');
      upstream.close();
    }
  });

  it('with workers, every line is JSON, a worker that cannot start says why, and restarts back off', async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const tlsPort = (taken.address() as AddressInfo).port;
    const { child, out, exited } = spawnEntryPoint({
      REINIT_GUARD_UPSTREAM: 'http://127.0.0.1:1',
      REINIT_GUARD_PG_URL: 'postgres://guard:pw@127.0.0.1:1/coder',
      REINIT_GUARD_LISTEN: `127.0.0.1:${await freePort()}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
      REINIT_GUARD_WORKERS: '2',
      REINIT_GUARD_TLS_LISTEN: `127.0.0.1:${tlsPort}`,
      REINIT_GUARD_TLS_CERT_FILE: 'testkit/tls/server.pem',
      REINIT_GUARD_TLS_KEY_FILE: 'testkit/tls/server.key',
    });
    const lines = () => (out.stdout + out.stderr).split('\n').filter(Boolean);
    const exits = () => lines().filter((l) => l.includes('proxy worker exited'));
    try {
      await waitFor(() => exits().length >= 3, 20_000, 'workers to exit three times');
      const failed = lines().find((l) => l.includes('"msg":"failed to start"'));
      expect(failed).toContain(`REINIT_GUARD_TLS_LISTEN 127.0.0.1:${tlsPort}: cannot listen: the address is already in use`);
      const delays = exits().map((l) => (JSON.parse(l) as { in_ms: number }).in_ms);
      for (let i = 1; i < delays.length; i++) expect(delays[i]).toBeGreaterThan(delays[i - 1]!);
    } finally {
      child.kill('SIGINT');
      await exited;
      taken.close();
    }
    for (const line of lines()) expect(() => JSON.parse(line), line).not.toThrow();
  });

  describe('command line', () => {
    const valid = async () => ({
      REINIT_GUARD_UPSTREAM: 'http://127.0.0.1:1',
      REINIT_GUARD_PG_URL: 'postgres://guard:pw@127.0.0.1:1/coder',
      REINIT_GUARD_LISTEN: `127.0.0.1:${await freePort()}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
    });
    /** Whether something listens on host:port. */
    const bound = (hostPort: string) =>
      new Promise<boolean>((resolve) => {
        const [host, port] = hostPort.split(':') as [string, string];
        const s = net.connect(Number(port), host);
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });

    it.each([['--help'], ['-h'], ['help']])('%s prints the usage and exits 0 without binding a port', async (arg) => {
      const env = await valid();
      const { out, exited } = spawnEntryPoint(env, [arg]);
      expect(await exited).toBe(0);
      expect(out.stdout).toContain('usage: coder-reinit-guard [command]');
      expect(out.stdout).toContain('audit');
      expect(out.stdout).toContain('Configuration');
      expect(await bound(env.REINIT_GUARD_LISTEN)).toBe(false);
      expect(await bound(env.REINIT_GUARD_ADMIN_LISTEN)).toBe(false);
    });

    it('--version prints the version and exits 0', async () => {
      const { out, exited } = spawnEntryPoint(await valid(), ['--version']);
      expect(await exited).toBe(0);
      expect(out.stdout).toBe(`coder-reinit-guard ${GUARD_VERSION}\n`);
    });

    it.each([
      ['audti', 'unknown command "audti" (did you mean "audit"?)'],
      ['--frobnicate', 'unknown option "--frobnicate"'],
      ['serve', 'unknown command "serve"'],
    ])('%s exits 2 with the usage, without binding a port', async (arg, problem) => {
      const env = await valid();
      const { out, exited } = spawnEntryPoint(env, [arg]);
      expect(await exited).toBe(2);
      expect(out.stderr).toContain(problem);
      expect(out.stderr).toContain('usage: coder-reinit-guard [command]');
      expect(out.stdout).toBe('');
      expect(await bound(env.REINIT_GUARD_LISTEN)).toBe(false);
    });

    it.each([['REINIT_GUARD_LISTEN'], ['REINIT_GUARD_ADMIN_LISTEN']])('a port in use is named by its variable (%s)', async (variable) => {
      const env = await valid();
      const taken = net.createServer();
      const [host, port] = (env as Record<string, string>)[variable]!.split(':') as [string, string];
      await new Promise<void>((r) => taken.listen(Number(port), host, r));
      try {
        const { out, exited } = spawnEntryPoint(env);
        expect(await exited).toBe(1);
        // The configuration was read, so the failure is a JSON log line.
        const line = out.stdout.split('\n').find((l) => l.includes('failed to start'));
        expect(JSON.parse(line ?? '{}')).toMatchObject({ level: 'error', code: 'EADDRINUSE' });
        expect(line).toContain(`${variable} ${host}:${port}: cannot listen: the address is already in use`);
      } finally {
        taken.close();
      }
    });

    it('warns at start about each unknown REINIT_GUARD_* variable, naming the closest known one', async () => {
      const env = await valid();
      const { child, out, exited } = spawnEntryPoint({ ...env, REINIT_GUARD_LOGLEVEL: 'debug', REINIT_GUARD_RETIRE: '>=2.35.1' });
      try {
        await waitFor(() => out.stdout.includes('coder-reinit-guard started'), 15_000, 'the start line');
        const warnings = out.stdout
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
          .filter((l) => l.msg === 'unknown configuration variable ignored');
        expect(warnings.map((w) => [w.level, w.variable, w.did_you_mean])).toEqual([
          ['warn', 'REINIT_GUARD_LOGLEVEL', 'REINIT_GUARD_LOG_LEVEL'],
          ['warn', 'REINIT_GUARD_RETIRE', 'REINIT_GUARD_RETIRE_AT'],
        ]);
      } finally {
        child.kill('SIGTERM');
        await exited;
      }
    });
  });
});
