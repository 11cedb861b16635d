import cluster from 'node:cluster';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { effectiveBacklog } from '../config/index.js';

/**
 * Listens and resolves with the bound address (port 0 picks a free port). `backlog` is the
 * accept queue: Node's default of 511 overflows when a whole fleet reconnects at once, and a
 * connection dropped at a full queue comes back only after TCP's SYN retransmission backoff
 * (1 s, 3 s, 7 s, ...). The kernel caps it at net.core.somaxconn.
 */
export const listen = (server: Server, host: string, port: number, backlog?: number, reusePort = false, variable?: string) =>
  new Promise<AddressInfo>((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException) => reject(variable ? new ListenError(variable, host, port, err) : err);
    server.once('error', failed);
    server.listen({ port, host, ...(backlog ? { backlog } : {}), ...(reusePort ? { reusePort } : {}) }, () => {
      server.off('error', failed);
      resolve(server.address() as AddressInfo);
    });
  });

const LISTEN_CAUSES: Record<string, string> = {
  EADDRINUSE: 'the address is already in use (another process, or the other listen variable)',
  EACCES: 'permission denied (a port below 1024 needs privileges)',
  EADDRNOTAVAIL: 'the host is not an address of this machine',
};

/** A listener that could not bind, naming the variable that configured it. */
export class ListenError extends Error {
  readonly code: string | undefined;
  constructor(variable: string, host: string, port: number, cause: NodeJS.ErrnoException) {
    const shown = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    super(`${variable} ${shown}: cannot listen: ${LISTEN_CAUSES[cause.code ?? ''] ?? cause.message} (${cause.code ?? 'error'})`, { cause });
    this.code = cause.code;
  }
}

/** Most listening sockets one process opens for one address. */
const MAX_SOCKETS = 16;

/** Whether this Node can open several listening sockets on one port (SO_REUSEPORT: 22.12, 23.1). */
export function reusePortSupported(version = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/**
 * How many listening sockets give the requested accept queue: the kernel caps each socket's
 * queue at net.core.somaxconn (4096 by default, per pod), and with SO_REUSEPORT it spreads new
 * connections over the sockets, each with a queue of its own. One, where Node cannot do it or
 * in a cluster worker (the primary owns the socket there).
 */
export function listenSockets(backlog: number, granted = effectiveBacklog(backlog), supported = reusePortSupported() && !cluster.isWorker): number {
  if (!supported || granted >= backlog) return 1;
  return Math.min(MAX_SOCKETS, Math.ceil(backlog / granted));
}

/**
 * Listens on one address with `count` sockets (SO_REUSEPORT when more than one), each an
 * http.Server from `make` with the same handlers; resolves with the servers and the address.
 */
export async function listenAll<S extends Server>(make: () => S, host: string, port: number, backlog: number, count: number, variable?: string): Promise<{ servers: S[]; address: AddressInfo }> {
  const first = make();
  const address = await listen(first, host, port, backlog, count > 1, variable);
  const servers = [first];
  try {
    for (let i = 1; i < count; i++) {
      const server = make();
      await listen(server, host, address.port, backlog, true, variable);
      servers.push(server);
    }
  } catch (err) {
    for (const s of servers) s.close();
    throw err;
  }
  return { servers, address };
}
