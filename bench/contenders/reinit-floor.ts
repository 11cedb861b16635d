/**
 * Contender: "the floor" of a cached `/reinit` storm, the least a Node process can do per
 * agent: read the agent's request, open coderd's connection, send the request, read
 * coderd's head and first event, answer a fixed 409, close both. No checks, no decision, no
 * database, no metrics: a measurement of what the platform costs, not a proxy to run.
 *
 * FLOOR_MODE picks how much of Node's HTTP stack it uses, so that the storm bench can show
 * where a storm's memory and time go:
 *
 * - `raw`: net sockets on both sides, heads found by a byte scan;
 * - `server`: node:http's server for the agents (as the guard), a raw socket to coderd;
 * - `both`: node:http on both sides (the guard's `/reinit` hop is node:http's client).
 *
 * Listens on 16 SO_REUSEPORT sockets of one port with the kernel's largest accept queue,
 * as the guard does, so that no contender loses connections at accept.
 */
import http from 'node:http';
import net from 'node:net';

const target = new URL(process.env.TARGET as string);
const upstreamPort = Number(target.port);
const upstreamHost = target.hostname;
const mode = process.env.FLOOR_MODE ?? 'raw';
const body = '{"message":"Workspace is not a prebuilt workspace waiting to be claimed.","detail":"floor"}\n';
const rawAnswer = Buffer.from(`HTTP/1.1 409 Conflict\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);

/** True once `got` holds a response head and, after it, one complete SSE event. */
const firstEvent = (got: Buffer) => {
  const head = got.indexOf('\r\n\r\n');
  return head >= 0 && got.indexOf('\n\n', head + 4) >= 0;
};

const append = (a: Buffer | null, b: Buffer) => (a ? Buffer.concat([a, b]) : b);

/** Opens coderd's connection, sends `head`, calls `answer` once the first event arrived. */
function rawUpstream(head: string | Buffer, answer: () => void, fail: () => void): net.Socket {
  const up = net.connect(upstreamPort, upstreamHost);
  let got: Buffer | null = null;
  up.on('error', fail);
  up.on('data', (chunk: Buffer) => {
    got = append(got, chunk);
    if (!firstEvent(got)) return;
    up.destroy();
    answer();
  });
  up.write(head);
  return up;
}

const rawConnection = (client: net.Socket) => {
  let head: Buffer | null = null;
  client.on('error', () => {});
  const onData = (chunk: Buffer) => {
    head = append(head, chunk);
    if (head.indexOf('\r\n\r\n') < 0) return;
    client.off('data', onData);
    const up = rawUpstream(head, () => client.end(rawAnswer), () => client.destroy());
    client.once('close', () => up.destroy());
  };
  client.on('data', onData);
};

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
  const answer = () => {
    res.writeHead(409, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': body.length });
    res.end(body);
  };
  if (mode === 'server') {
    let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) head += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    const up = rawUpstream(`${head}Connection: close\r\n\r\n`, answer, () => res.destroy());
    res.once('close', () => up.destroy());
    return;
  }
  const up = http.request({ host: upstreamHost, port: upstreamPort, method: req.method, path: req.url, headers: req.rawHeaders as unknown as http.OutgoingHttpHeaders, agent, setHost: false });
  up.on('error', () => res.destroy());
  up.on('response', (upRes) => {
    let got = '';
    upRes.on('data', (chunk: Buffer) => {
      got += chunk.toString('latin1');
      if (!got.includes('\n\n')) return;
      up.destroy();
      answer();
    });
  });
  up.end();
  res.once('close', () => up.destroy());
};

const port = Number(process.env.PORT);
for (let i = 0; i < 16; i++) {
  const server = mode === 'raw' ? net.createServer(rawConnection) : http.createServer(onRequest);
  server.listen({ port, host: '127.0.0.1', backlog: 65535, reusePort: true });
}
