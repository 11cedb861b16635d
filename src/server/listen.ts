import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * Listens and resolves with the bound address (port 0 picks a free port). `backlog` is the
 * accept queue: Node's default of 511 overflows when a whole fleet reconnects at once, and a
 * connection dropped at a full queue comes back only after TCP's SYN retransmission backoff
 * (1 s, 3 s, 7 s, ...). The kernel caps it at net.core.somaxconn.
 */
export const listen = (server: Server, host: string, port: number, backlog?: number) =>
  new Promise<AddressInfo>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, ...(backlog ? { backlog } : {}) }, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
