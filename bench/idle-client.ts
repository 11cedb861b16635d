/**
 * Opens CONNECTIONS idle connections to TARGET (half SSE, half WebSocket) at a bounded
 * pace, and reports on GET /wait once all are open (or failed). Its own process, so that
 * its file descriptors do not count against the guard's or the bench's.
 */
import http from 'node:http';
import WebSocket from 'ws';

const target = process.env.TARGET as string;
const n = Number(process.env.CONNECTIONS);
const keep: unknown[] = [];
let opened = 0;
let errors = 0;
const errorKinds: Record<string, number> = {};
let sse = 0;
let websocket = 0;
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function openSse(): Promise<void> {
  return new Promise((resolve) => {
    const req = http.get(`${target}/sse-idle`, { agent }, (res) => {
      res.once('data', () => {
        opened++;
        sse++;
        resolve();
      });
      res.on('error', () => {});
      keep.push(res);
    });
    req.on('error', (e: NodeJS.ErrnoException) => {
      errorKinds[String(e.code ?? e.message)] = (errorKinds[String(e.code ?? e.message)] ?? 0) + 1;
      errors++;
      resolve();
    });
  });
}

function openWs(): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${target.replace('http', 'ws')}/ws`, { perMessageDeflate: false });
    ws.once('open', () => {
      opened++;
      websocket++;
      resolve();
    });
    ws.once('error', (e) => {
      errorKinds[String((e as NodeJS.ErrnoException).code ?? e.message)] = (errorKinds[String((e as NodeJS.ErrnoException).code ?? e.message)] ?? 0) + 1;
      errors++;
      resolve();
    });
    keep.push(ws);
  });
}

const done = (async () => {
  const batch = 200;
  for (let i = 0; i < n; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, n - i) }, (_, j) => ((i + j) % 2 === 0 ? openSse() : openWs())));
  }
  await new Promise((r) => setTimeout(r, 1000)); // settle, then report
})();

http.createServer(async (_req, res) => {
  await done;
  res.end(JSON.stringify({ opened, errors, errorKinds, sse, websocket }));
}).listen(Number(process.env.PORT), '127.0.0.1');
