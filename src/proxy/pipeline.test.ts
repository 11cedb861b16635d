import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../../test/support/env.js';
import { PAUSE_AFTER, serialiseRequests } from './pipeline.js';

/**
 * The pipeline on a bare Node server on loopback: what it hands the listener, and when it
 * stops reading. (test/integration/pipelining.test.ts runs the guard itself.)
 */
let server: http.Server | undefined;
let client: net.Socket | undefined;

afterEach(async () => {
  client?.destroy();
  if (server) {
    server.closeAllConnections();
    await new Promise<void>((r) => server!.close(() => r()));
  }
  server = client = undefined;
});

/** A server whose listener holds the first request's answer until `release` is called. */
async function holdingServer() {
  const state = { parsed: 0, handed: 0, socket: null as net.Socket | null, held: null as http.ServerResponse | null };
  server = http.createServer(
    serialiseRequests((req, res) => {
      state.handed++;
      if (!state.held) state.held = res;
      else res.end('#');
    }),
  );
  // Every request Node parsed, handed over or waiting.
  server.on('request', () => state.parsed++);
  server.on('connection', (s: net.Socket) => (state.socket = s));
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return { state, port: (server.address() as AddressInfo).port };
}

const laneSymbols = (s: net.Socket) => Object.getOwnPropertySymbols(s).filter((k) => k.description === 'pipeline lane');

describe('serialiseRequests', () => {
  it('hands a request over at once when nothing is ahead of it, and keeps nothing on its connection', async () => {
    const { state, port } = await holdingServer();
    client = net.connect(port, '127.0.0.1');
    client.write('GET /a HTTP/1.1\r\nHost: h\r\n\r\n');
    await waitFor(() => state.handed === 1, 5000, 'the request handed over');
    expect(state.held!.socket).toBe(state.socket);
    expect(laneSymbols(state.socket!)).toEqual([]);
  });

  it('stops reading a deep pipeline: what waits is bounded by one read, whatever the client sends', async () => {
    const { state, port } = await holdingServer();
    const request = 'GET /x HTTP/1.1\r\nHost: h\r\n\r\n';
    const n = 100_000;
    client = net.connect(port, '127.0.0.1');
    client.on('error', () => {});
    client.write(request.repeat(n));
    // The server stops reading once PAUSE_AFTER requests wait; Node's reads are at most 64 KiB.
    await waitFor(() => state.socket?.isPaused() === true, 10_000, 'the socket paused');
    expect(state.handed).toBe(1);
    expect(state.parsed).toBeGreaterThanOrEqual(PAUSE_AFTER);
    expect(state.parsed).toBeLessThanOrEqual(PAUSE_AFTER + 2 * Math.ceil(65_536 / request.length));
    // Its turn comes: the rest is answered in order, reading resumed as the queue empties.
    let answered = 0;
    // Each body is one '#', a byte no head holds.
    client.on('data', (c: Buffer) => (answered += c.toString('latin1').split('#').length - 1));
    state.held!.end('#');
    await waitFor(() => answered === n, 120_000, 'every answer');
    expect(state.handed).toBe(n);
  }, 180_000);
});
