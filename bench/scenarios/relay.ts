import http from 'node:http';
import WebSocket from 'ws';
import { startContender, type ContenderName } from '../lib/contenders.js';
import { freePort, startNode } from '../lib/procs.js';
import { median, percentile, round } from '../lib/stats.js';

/** One-way SSE latency samples (ms): the upstream stamps each event with the monotonic clock. */
function sseLatencies(base: string, n: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const out: number[] = [];
    http.get(`${base}/sse-tick?n=${n}&every=5`, (res) => {
      let buf = '';
      res.on('data', (c: Buffer) => {
        const now = process.hrtime.bigint();
        buf += c.toString();
        let i: number;
        while ((i = buf.indexOf('\n\n')) !== -1) {
          const m = /data: (\d+)/.exec(buf.slice(0, i));
          if (m) out.push(Number(now - BigInt(m[1]!)) / 1e6);
          buf = buf.slice(i + 2);
        }
      });
      res.on('end', () => resolve(out));
    }).on('error', reject);
  });
}

/** WebSocket round-trip samples (ms), one message in flight at a time. */
async function wsRoundTrips(base: string, n: number): Promise<number[]> {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws`, { perMessageDeflate: false });
  await new Promise((r, j) => ws.once('open', r).once('error', j));
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await new Promise<void>((r) => {
      ws.once('message', () => r());
      ws.send(`m${i}`);
    });
    out.push(performance.now() - t);
  }
  ws.close();
  return out;
}

export interface RelayRow {
  contender: ContenderName;
  sseMedianMs: number;
  sseP99Ms: number;
  wsRttMedianMs: number;
  wsRttP99Ms: number;
}

/** SSE and WebSocket relay latency through each proxy vs. direct. */
export async function runRelay(opts: { messages: number; guardEnv: Record<string, string> }): Promise<RelayRow[]> {
  const port = await freePort();
  const up = await startNode('node-upstream', 'bench/upstream-node.ts', port);
  const rows: RelayRow[] = [];
  try {
    for (const name of ['direct', 'nginx', 'guard'] as ContenderName[]) {
      const c = await startContender(name, `http://127.0.0.1:${port}`, opts.guardEnv);
      try {
        await sseLatencies(c.url, 50);
        await wsRoundTrips(c.url, 100); // warm-up
        const sse = await sseLatencies(c.url, opts.messages);
        const ws = await wsRoundTrips(c.url, opts.messages);
        rows.push({
          contender: name,
          sseMedianMs: round(median(sse), 3),
          sseP99Ms: round(percentile(sse, 99), 3),
          wsRttMedianMs: round(median(ws), 3),
          wsRttP99Ms: round(percentile(ws, 99), 3),
        });
        process.stderr.write(`  relay ${name}: sse median ${round(median(sse), 3)} ms, ws rtt median ${round(median(ws), 3)} ms\n`);
      } finally {
        await c.proc?.stop();
      }
    }
  } finally {
    await up.stop();
  }
  return rows;
}
