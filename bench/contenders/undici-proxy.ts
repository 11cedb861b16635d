/**
 * Contender: "the Node ceiling", a minimal proxy on undici's Pool.stream: no header passes,
 * no checks, no upgrades. What a Node process can do at most on the same server side.
 */
import http from 'node:http';
import { Pool } from 'undici';

const pool = new Pool(process.env.TARGET as string, { headersTimeout: 0, bodyTimeout: 0 });
const server = http.createServer((req, res) => {
  pool
    .stream({ path: req.url ?? '/', method: req.method as 'GET', headers: req.headers as Record<string, string>, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }, ({ statusCode, headers }) => {
      res.writeHead(statusCode, headers as http.OutgoingHttpHeaders);
      return res;
    })
    .catch(() => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
});
server.listen(Number(process.env.PORT), '127.0.0.1');
