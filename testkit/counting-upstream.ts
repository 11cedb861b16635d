import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** A stand-in for coderd that counts how many requests are open on it at once. */
export interface CountingUpstream {
  url: string;
  port: number;
  /** Requests (and upgrades) received and not yet answered or abandoned. */
  readonly open: number;
  /** The most requests ever open at once. */
  readonly maxOpen: number;
  /** Connections the upstream accepted. */
  readonly connections: number;
  /** What happened, in order: `arrive GET /x`, `answer GET /x`, `abandon GET /x`, `upgrade GET /x`. */
  readonly events: readonly string[];
  /** Targets that arrived, in order. */
  readonly arrived: readonly string[];
  /** Forgets what happened so far (open requests stay counted). */
  reset(): void;
  close(): Promise<void>;
}

/**
 * Starts an upstream for pipelining tests. Its answers, by path:
 * - `/watch/...`: a 200 that streams a line every 20 ms and never ends;
 * - `/hold/<ms>/...`: a 200 after `<ms>` milliseconds;
 * - anything else: a 200 on the next turn of the event loop (answered at once, requests
 *   that arrive together would never be seen open together).
 * Every body is the target followed by `;`, so a client can check the order of its answers.
 * An upgrade gets a 101 and the connection is ended. The guard's own `/api/v2/buildinfo`
 * polls are answered and never counted.
 */
export async function startCountingUpstream(): Promise<CountingUpstream> {
  let open = 0;
  let maxOpen = 0;
  let connections = 0;
  let events: string[] = [];
  let arrived: string[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer((req, res) => {
    const target = req.url ?? '';
    const name = `${req.method} ${target}`;
    if (target === '/api/v2/buildinfo') return void res.end('{"version":"v2.34.0"}');
    open++;
    maxOpen = Math.max(maxOpen, open);
    events.push(`arrive ${name}`);
    arrived.push(target);
    let counted = true;
    const done = (what: string) => {
      if (!counted) return;
      counted = false;
      open--;
      events.push(`${what} ${name}`);
    };
    // Answered once the whole response is written; abandoned if the proxy went away first.
    res.once('finish', () => done('answer'));
    res.once('close', () => done('abandon'));
    req.resume();
    const body = `${target};`;
    if (target.startsWith('/watch/')) {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write(body);
      const tick = setInterval(() => res.write('tick\n'), 20);
      timers.add(tick);
      res.once('close', () => {
        clearInterval(tick);
        timers.delete(tick);
      });
      return;
    }
    const hold = /^\/hold\/(\d+)\//.exec(target);
    const answer = () => res.writeHead(200, { 'Content-Length': Buffer.byteLength(body) }).end(req.method === 'HEAD' ? undefined : body);
    if (!hold) return void setImmediate(answer);
    const timer = setTimeout(() => {
      timers.delete(timer);
      answer();
    }, Number(hold[1]));
    timers.add(timer);
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s: Socket) => {
    connections++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: Socket) => {
    events.push(`upgrade ${req.method} ${req.url}`);
    arrived.push(req.url ?? '');
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade ?? ''}\r\nConnection: Upgrade\r\n\r\n`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get open() {
      return open;
    },
    get maxOpen() {
      return maxOpen;
    },
    get connections() {
      return connections;
    },
    get events() {
      return events;
    },
    get arrived() {
      return arrived;
    },
    reset() {
      events = [];
      arrived = [];
      maxOpen = open;
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
