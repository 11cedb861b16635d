import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { waitFor } from '../support/env.js';
import { spawnEntryPoint } from '../support/guard-process.js';

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
});
