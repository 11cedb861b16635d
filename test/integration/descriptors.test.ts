import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { waitFor } from '../support/env.js';

/**
 * Out of file descriptors: in a reconnect storm each agent holds two sockets (its own and the
 * guard's to coderd), and at the process's limit opening coderd's connection fails with
 * EMFILE. Nothing was sent then: a bodiless request waits for a descriptor and goes out once
 * one is free, instead of a 502 (10,000 agents under a 20,000 limit got 43 of them); so does an
 * upgrade without a body (10,000 idle tunnels under the same limit got 18-21).
 */
/** One sample of the guard's metrics, by name and label text. */
async function guardMetric(admin: number, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/**
 * Starts the guard with a limit of 160 descriptors: the process's own use (Node, tsx,
 * listeners) is well under 100, so 100 concurrent requests (200 sockets) cross it.
 */
async function startLimitedGuard(upstreamPort: number): Promise<{ port: number; admin: number; log: () => string; stop: () => Promise<void> }> {
  const [port, admin] = [await freePort(), await freePort()];
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const child = spawn('prlimit', ['--nofile=160', process.execPath, '--import', 'tsx', 'src/main.ts'], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${upstreamPort}`,
      REINIT_GUARD_MODE: 'off',
      REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
      REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
      REINIT_GUARD_SHUTDOWN_DELAY: '0',
      REINIT_GUARD_LISTEN_BACKLOG: '511',
      REINIT_GUARD_LOG_LEVEL: 'debug',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise((r) => child.once('exit', r));
  const stop = async () => {
    child.kill('SIGKILL');
    await exited;
  };
  try {
    await waitFor(() => out.includes('coder-reinit-guard started'), 15_000, 'the guard to start');
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, admin, log: () => out, stop };
}

/**
 * Connects 100 clients first (the idle guard accepts each at once), then has each send
 * `request(i)` at once: the guard holds 100 client sockets and runs out opening coderd's.
 * Resolves with the sockets and, per client, the first line it got back.
 */
async function hundredAtOnce(port: number, admin: number, request: (i: number) => string, closeOnAnswer = false): Promise<{ sockets: net.Socket[]; answers: Array<Promise<string>> }> {
  const sockets = await Promise.all(
    Array.from({ length: 100 }, () => new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    })),
  );
  await waitFor(async () => (await guardMetric(admin, 'coder_reinit_guard_connections', 'side="client"')) >= 100, 10_000, 'the guard to accept every client');
  const answers = sockets.map(
    (s, i) =>
      new Promise<string>((resolve) => {
        let got = '';
        s.on('data', (c: Buffer) => {
          got += c.toString('latin1');
          if (!got.includes('\r\n\r\n')) return;
          resolve(got.slice(0, got.indexOf('\r\n')));
          if (closeOnAnswer) s.destroy();
        });
        s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        s.once('close', () => resolve(got.slice(0, got.indexOf('\r\n')) || 'closed'));
        s.write(request(i));
      }),
  );
  return { sockets, answers };
}

/**
 * The storm at the limit: `upstream` (not yet listening) holds every request until
 * `release` is called. 100 clients ask at once through a guard limited to 160 descriptors,
 * which runs out; then coderd is released. Returns each client's first line back, once the
 * guard said it waited for descriptors and counted the waits.
 */
async function hundredThroughLimitedGuard(upstream: http.Server, opts: { request: (i: number) => string; release: () => void; closeOnAnswer?: boolean }): Promise<string[]> {
  upstream.maxConnections = 10_000;
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const guard = await startLimitedGuard((upstream.address() as AddressInfo).port);
  try {
    const { sockets, answers } = await hundredAtOnce(guard.port, guard.admin, opts.request, opts.closeOnAnswer);
    await waitFor(() => guard.log().includes('no file descriptor'), 15_000, 'the guard to run out of descriptors');
    opts.release();
    const all = await Promise.all(answers);
    for (const s of sockets) s.destroy();
    const retries = await (await fetch(`http://127.0.0.1:${guard.admin}/metrics`)).text();
    expect(retries).toMatch(/coder_reinit_guard_upstream_retries_total\{reason="no_descriptor"\} [1-9]/);
    return all;
  } finally {
    await guard.stop();
    upstream.closeAllConnections();
    upstream.close();
  }
}

describe('the guard out of file descriptors', () => {
  it('holds bodiless requests until a descriptor is free: every one answered by coderd, none 502', async () => {
    // coderd answers each request only once released: until then every request holds its
    // client's socket and the guard's socket to coderd.
    const held: http.ServerResponse[] = [];
    let release = false;
    const upstream = http.createServer((req, res) => {
      if (req.url === '/api/v2/buildinfo') return void res.end('{"version":"v2.34.5"}');
      if (release) return void res.end('ok');
      held.push(res);
    });
    const all = await hundredThroughLimitedGuard(upstream, {
      request: (i) => `GET /api/v2/x/${i} HTTP/1.1\r\nHost: coder\r\n\r\n`,
      release: () => {
        release = true;
        for (const res of held.splice(0)) res.end('ok');
      },
    });
    expect(all.filter((a) => a !== 'HTTP/1.1 200 OK')).toEqual([]);
  });

  it('holds upgrades (DERP, WebSocket) until a descriptor is free: every one switched by coderd, none 502', async () => {
    // coderd switches each upgrade only once released (agents reconnect their DERP and RPC
    // sockets in the same storm as /reinit).
    const held: Duplex[] = [];
    let release = false;
    const switched = (socket: Duplex) => socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n');
    const upstream = http.createServer((req, res) => {
      if (req.url === '/api/v2/buildinfo') return void res.end('{"version":"v2.34.5"}');
      res.statusCode = 404;
      res.end();
    });
    upstream.on('upgrade', (_req: http.IncomingMessage, socket: Duplex) => {
      socket.on('error', () => {});
      // As coderd's DERP and WebSocket servers: the client's end ends the tunnel.
      socket.on('end', () => socket.end());
      if (release) switched(socket);
      else held.push(socket);
    });
    const all = await hundredThroughLimitedGuard(upstream, {
      request: (i) => `GET /derp/${i} HTTP/1.1\r\nHost: coder\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n`,
      release: () => {
        release = true;
        for (const socket of held.splice(0)) switched(socket);
      },
      // A tunnel holds its descriptors for its life: each client leaves once switched, so that
      // the waiting upgrades find descriptors coming free, as agents' streams end in a storm.
      closeOnAnswer: true,
    });
    expect(all.filter((a) => a !== 'HTTP/1.1 101 Switching Protocols')).toEqual([]);
  });
});
