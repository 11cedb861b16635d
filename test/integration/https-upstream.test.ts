import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { startTestGuard, type TestGuard } from '../support/env.js';

const tls = (f: string) => fileURLToPath(new URL(`../../testkit/tls/${f}`, import.meta.url));
let server: https.Server;
let base: string;
const guards: TestGuard[] = [];

beforeAll(async () => {
  server = https.createServer({ key: readFileSync(tls('server.key')), cert: readFileSync(tls('server.pem')) }, (req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ host: req.headers.host, url: req.url }));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (d, binary) => ws.send(d, { binary })));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const g of guards) await g.guard.close(100);
  server.closeAllConnections();
  server.close();
});

describe('an https upstream', () => {
  it('works with a custom CA bundle, Host still the client one', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_UPSTREAM_CA_FILE: tls('ca.pem') });
    guards.push(g);
    const res = await fetch(`${g.url}/api/v2/buildinfo?x=1`, { headers: { 'X-Probe': '1' } });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ host: `127.0.0.1:${g.guard.proxyAddress.port}`, url: '/api/v2/buildinfo?x=1' });
  });

  it('tunnels WebSockets over TLS with the same CA bundle', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_UPSTREAM_CA_FILE: tls('ca.pem') });
    guards.push(g);
    const ws = new WebSocket(`ws://127.0.0.1:${g.guard.proxyAddress.port}/api/v2/workspaceagents/me/rpc`);
    await new Promise((r, j) => ws.once('open', r).once('error', j));
    ws.send('over tls');
    expect(String(await new Promise((r) => ws.once('message', r)))).toBe('over tls');
    ws.close();
  });

  it('without the CA, an untrusted certificate is a 502, never a silent downgrade', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off' });
    guards.push(g);
    const res = await fetch(`${g.url}/api/v2/buildinfo`);
    expect(res.status).toBe(502);
    expect(await g.metric('coder_reinit_guard_upstream_errors_total', { kind: 'tls' })).toBe(1);
  });

  it('verifies coderd against REINIT_GUARD_UPSTREAM_SERVERNAME when set', async () => {
    const good = await startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_UPSTREAM_CA_FILE: tls('ca.pem'), REINIT_GUARD_UPSTREAM_SERVERNAME: 'localhost' });
    const bad = await startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_UPSTREAM_CA_FILE: tls('ca.pem'), REINIT_GUARD_UPSTREAM_SERVERNAME: 'coder.example.com' });
    guards.push(good, bad);
    expect((await fetch(`${good.url}/x`)).status).toBe(200);
    expect((await fetch(`${bad.url}/x`)).status).toBe(502);
  });

  it('an unreadable CA file is a configuration error naming the variable', async () => {
    await expect(startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_UPSTREAM_CA_FILE: '/nonexistent/ca.pem' })).rejects.toThrow(
      'REINIT_GUARD_UPSTREAM_CA_FILE "/nonexistent/ca.pem" is not valid: use a readable PEM file (ENOENT)',
    );
  });
});

describe('the TLS listener', () => {
  it('serves proxied requests and WebSockets over TLS, with X-Forwarded-Proto https', async () => {
    const echo = http.createServer((req, res) => res.end(JSON.stringify({ proto: req.headers['x-forwarded-proto'], host: req.headers.host })));
    const wss = new WebSocketServer({ server: echo });
    wss.on('connection', (ws) => ws.on('message', (d) => ws.send(String(d))));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const g = await startTestGuard({
      REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(echo.address() as AddressInfo).port}`,
      REINIT_GUARD_MODE: 'off',
      REINIT_GUARD_TLS_LISTEN: '127.0.0.1:0',
      REINIT_GUARD_TLS_CERT_FILE: tls('server.pem'),
      REINIT_GUARD_TLS_KEY_FILE: tls('server.key'),
    });
    guards.push(g);
    const port = g.guard.tlsAddress!.port;
    const ca = readFileSync(tls('ca.pem'));
    const body = await new Promise<string>((resolve, reject) => {
      https.get({ host: '127.0.0.1', port, path: '/api/v2/buildinfo', ca, servername: 'localhost', headers: { Host: 'coder.example.com' } }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve(b));
      }).on('error', reject);
    });
    expect(JSON.parse(body)).toEqual({ proto: 'https', host: 'coder.example.com' });
    const ws = new WebSocket(`wss://127.0.0.1:${port}/api/v2/workspaceagents/me/rpc`, { ca });
    await new Promise((r, j) => ws.once('open', r).once('error', j));
    ws.send('secure');
    expect(String(await new Promise((r) => ws.once('message', r)))).toBe('secure');
    ws.close();
    echo.closeAllConnections();
    echo.close();
  });

  it('needs certificate and key together', async () => {
    await expect(startTestGuard({ REINIT_GUARD_UPSTREAM: base, REINIT_GUARD_MODE: 'off', REINIT_GUARD_TLS_LISTEN: '127.0.0.1:0' })).rejects.toThrow(
      'set REINIT_GUARD_TLS_LISTEN, REINIT_GUARD_TLS_CERT_FILE and REINIT_GUARD_TLS_KEY_FILE together',
    );
  });
});
