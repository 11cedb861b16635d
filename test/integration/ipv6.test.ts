import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * An IPv6-literal upstream (`http://[::1]:7080`): the URL keeps the brackets in its
 * hostname, which no resolver knows. Plain GETs went through undici (which strips them),
 * while upgrades, readiness and the retirement check went through node:http with the
 * brackets: WebSocket and DERP got 502 ENOTFOUND, /readyz said coderd was down and the
 * retirement never saw coderd's version.
 */
let upstream: http.Server;
let guard: TestGuard;

beforeAll(async () => {
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })));
  upstream = http.createServer((req, res) => {
    if (req.url === '/api/v2/buildinfo') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"version":"v2.35.1+8b44bd6"}');
    } else res.end(`plain ${req.headers.host}`);
  });
  upstream.on('upgrade', (req, socket, head) => {
    if (req.headers.upgrade?.toLowerCase() === 'derp') {
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\nDERP-SERVER-HELLO');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  await new Promise<void>((r) => upstream.listen(0, '::1', r));
  const port = (upstream.address() as AddressInfo).port;
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: `http://[::1]:${port}`,
    REINIT_GUARD_MODE: 'off',
    REINIT_GUARD_PROBE_INTERVAL: '100ms',
    REINIT_GUARD_RETIRE_POLL: '100ms',
  });
});

afterAll(async () => {
  await guard?.guard.close(100);
  upstream?.closeAllConnections();
  await new Promise((r) => upstream?.close(r));
});

describe('an IPv6-literal upstream', () => {
  it('plain requests reach it, with Host kept as the client sent it', async () => {
    expect(await (await fetch(`${guard.url}/x`)).text()).toBe(`plain 127.0.0.1:${guard.guard.proxyAddress.port}`);
  });

  it('WebSocket upgrades reach it', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${guard.guard.proxyAddress.port}/api/v2/workspaceagents/me/rpc`);
    const echoed = await new Promise<string>((resolve, reject) => {
      ws.once('open', () => ws.send('hello over v6'));
      ws.once('message', (d) => resolve(String(d)));
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
    });
    ws.close();
    expect(echoed).toBe('hello over v6');
  });

  it('DERP upgrades reach it', async () => {
    const socket = net.connect(guard.guard.proxyAddress.port, '127.0.0.1');
    let got = '';
    socket.on('data', (c) => (got += c.toString('latin1')));
    socket.write('GET /derp HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n');
    await waitFor(() => got.includes('DERP-SERVER-HELLO'), 5000, 'the DERP hello');
    socket.destroy();
    expect(got.startsWith('HTTP/1.1 101 ')).toBe(true);
  });

  it('readiness sees coderd up, and retirement reads its version', async () => {
    type Readyz = { ready: boolean; coderd_version: string | null; retired: boolean; dependencies: Record<string, { up: boolean | null }> };
    const readyz = async () => (await (await fetch(`${guard.adminUrl}/readyz`)).json()) as Readyz;
    await waitFor(async () => (await readyz()).dependencies.coderd?.up === true, 5000, 'coderd to be seen up');
    await waitFor(async () => (await readyz()).coderd_version === 'v2.35.1+8b44bd6', 5000, "coderd's version");
    // The default REINIT_GUARD_RETIRE_AT (>=2.35.1) matches it.
    expect((await readyz()).retired).toBe(true);
  });

  it('the guard itself listens on an IPv6 address', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://[::1]:${(upstream.address() as AddressInfo).port}`, REINIT_GUARD_MODE: 'off', REINIT_GUARD_LISTEN: '[::1]:0' });
    try {
      expect(await (await fetch(`http://[::1]:${g.guard.proxyAddress.port}/y`)).text()).toBe(`plain [::1]:${g.guard.proxyAddress.port}`);
    } finally {
      await g.guard.close(100);
    }
  });
});
