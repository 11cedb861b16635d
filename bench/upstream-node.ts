/**
 * The bench's Node upstream for long-lived traffic: SSE ticks carrying the monotonic clock
 * (latency), idle SSE streams and a WebSocket echo (relay latency, idle connections).
 */
import http from 'node:http';
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('message', (d, binary) => ws.send(d, { binary })));

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === '/sse-tick') {
    const n = Number(url.searchParams.get('n') ?? 200);
    const every = Number(url.searchParams.get('every') ?? 10);
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    let i = 0;
    const t = setInterval(() => {
      res.write(`event: data\ndata: ${process.hrtime.bigint()}\n\n`);
      if (++i >= n) {
        clearInterval(t);
        res.end();
      }
    }, every);
    res.once('close', () => clearInterval(t));
  } else if (url.pathname === '/sse-idle') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write('event: ping\n\n');
  } else {
    res.writeHead(404).end();
  }
});
server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)));
server.keepAliveTimeout = 65_000;
server.maxConnections = 50_000;
server.listen(Number(process.env.PORT), '127.0.0.1');
