import http from 'node:http';
import { describe, expect, it } from 'vitest';
import { listenAll, listenSockets, reusePortSupported } from './listen.js';

describe('listenSockets', () => {
  it.each([
    // backlog, kernel grant, SO_REUSEPORT available, sockets
    [65535, 4096, true, 16],
    [65535, 65535, true, 1],
    [10000, 4096, true, 3],
    [4096, 4096, true, 1],
    [65535, 128, true, 16], // at most 16
    [65535, 4096, false, 1], // Node 20, or a cluster worker
  ])('backlog %i granted %i (reuseport %s): %i', (backlog, granted, supported, want) => {
    expect(listenSockets(backlog, granted, supported)).toBe(want);
  });

  it.each([
    ['20.20.2', false],
    ['22.11.0', false],
    ['22.12.0', true],
    ['22.23.3', true],
    ['23.0.0', false],
    ['23.1.0', true],
    ['24.0.0', true],
    ['26.1.0', true],
  ])('Node %s can listen on one port with several sockets: %s', (version, want) => {
    expect(reusePortSupported(version)).toBe(want);
  });
});

describe('listenAll', () => {
  // Node 20 cannot open more than one (it has no SO_REUSEPORT option): there, one.
  const count = reusePortSupported() ? 3 : 1;
  it(`listens on one port with ${count} socket(s), each serving`, async () => {
    const served = new Set<number>();
    let n = 0;
    const make = () => {
      const id = n++;
      return http.createServer((_req, res) => {
        served.add(id);
        res.end('ok');
      });
    };
    const { servers, address } = await listenAll(make, '127.0.0.1', 0, 64, count);
    try {
      expect(servers).toHaveLength(count);
      for (const s of servers) expect((s.address() as { port: number }).port).toBe(address.port);
      // New connections from distinct source ports are spread over the sockets by hash.
      const agent = new http.Agent({ keepAlive: false });
      for (let i = 0; i < 60 && served.size < count; i++) {
        await new Promise<void>((resolve, reject) =>
          http.get({ host: '127.0.0.1', port: address.port, agent }, (res) => res.resume().on('end', resolve)).on('error', reject),
        );
      }
      expect(served.size).toBe(count);
    } finally {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    }
  });
});
