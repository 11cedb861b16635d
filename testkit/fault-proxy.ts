import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** How the fault proxy treats connections. */
export type FaultMode = 'pass' | 'refuse' | 'blackhole' | 'slow';

/**
 * A TCP proxy on loopback that can cut, black-hole or slow down the path to a server
 * (here: PostgreSQL), to test how the guard behaves when its database misbehaves while
 * coderd itself keeps working.
 */
export interface FaultProxy {
  port: number;
  /** Connections accepted so far, and open now. */
  accepted: number;
  open: number;
  /**
   * Highest number of connections open at once, as the kernel counts them: read from
   * /proc/net/tcp (ESTABLISHED on the proxy's port) whenever a connection arrives. The proxy's own count
   * lags on a busy machine (a new connection can be accepted before the close of the one the
   * client already dropped is read) and overstated the pool; the kernel's state does not lag.
   */
  maxOpen: number;
  setMode(mode: FaultMode, opts?: { delayMs?: number }): Promise<void>;
  close(): Promise<void>;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  let mode: FaultMode = 'pass';
  let delayMs = 0;
  const sockets = new Set<net.Socket>();
  const clients = new Set<net.Socket>();
  const state = { accepted: 0 };
  const server = net.createServer((client) => {
    state.accepted++;
    sockets.add(client);
    clients.add(client);
    client.on('error', () => {});
    client.once('close', () => {
      sockets.delete(client);
      clients.delete(client);
    });
    if (mode === 'blackhole') return; // accept, read nothing, answer nothing
    const upstream = net.connect(target.port, target.host);
    sockets.add(upstream);
    upstream.on('error', () => client.destroy());
    upstream.once('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    client.once('close', () => upstream.destroy());
    if (mode === 'slow') {
      // Every chunk from the server arrives late: queries outlast any short deadline.
      upstream.on('data', (c) => setTimeout(() => client.writable && client.write(c), delayMs));
      client.pipe(upstream);
    } else {
      client.pipe(upstream).pipe(client);
    }
  });
  const listen = (port = 0) => new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
  await listen();
  const port = (server.address() as AddressInfo).port;
  let kernelMax = 0;
  // The count can only rise when a connection arrives: read the kernel's then.
  server.on('connection', () => (kernelMax = Math.max(kernelMax, establishedOn(port))));
  const dropAll = () => {
    for (const s of sockets) s.destroy();
  };
  return {
    port,
    get accepted() {
      return state.accepted;
    },
    get open() {
      return clients.size;
    },
    get maxOpen() {
      return Math.max(kernelMax, establishedOn(port));
    },
    async setMode(next, opts = {}) {
      delayMs = opts.delayMs ?? 0;
      if (next === 'refuse' && mode !== 'refuse') {
        dropAll();
        await new Promise<void>((r) => server.close(() => r()));
      } else if (next !== 'refuse' && mode === 'refuse') {
        await listen(port);
      } else if (next !== mode) dropAll();
      mode = next;
    },
    async close() {
      dropAll();
      if (mode !== 'refuse') await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Connections ESTABLISHED on a local IPv4 port, from /proc/net/tcp (Linux). */
function establishedOn(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  let n = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n')) {
    // sl local_address rem_address st ...: state 01 is ESTABLISHED.
    const cols = line.trim().split(/\s+/);
    if (cols[1]?.endsWith(hex) && cols[3] === '01') n++;
  }
  return n;
}
