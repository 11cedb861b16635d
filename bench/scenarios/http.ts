import http from 'node:http';
import { deterministicStream } from '../../testkit/bytes.js';
import { CONTENDERS, startContender, startNginxUpstream, type ContenderName } from '../lib/contenders.js';
import { round } from '../lib/stats.js';
import { wrk } from '../lib/wrk.js';

const MiB = 1024 * 1024;

/** Downloads `count` × 64 MiB sequentially; MB/s. */
async function downloadRate(base: string, count: number): Promise<number> {
  const t = performance.now();
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    bytes += await new Promise<number>((resolve, reject) => {
      http.get(`${base}/download`, (res) => {
        let n = 0;
        res.on('data', (c: Buffer) => (n += c.length));
        res.on('end', () => resolve(n));
        res.on('error', reject);
      }).on('error', reject);
    });
  }
  return bytes / MiB / ((performance.now() - t) / 1000);
}

/** Uploads `count` × 64 MiB sequentially; MB/s. */
async function uploadRate(base: string, count: number): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < count; i++) {
    await new Promise<void>((resolve, reject) => {
      const req = http.request(`${base}/upload/blob`, { method: 'PUT', headers: { 'Content-Length': String(64 * MiB) } }, (res) => {
        res.resume();
        res.on('end', resolve);
      });
      req.on('error', reject);
      deterministicStream(64 * MiB).pipe(req);
    });
  }
  return (count * 64) / ((performance.now() - t) / 1000);
}

export interface HttpRow {
  contender: ContenderName;
  rps?: number;
  p50Ms?: number;
  p99Ms?: number;
  errors?: number;
  downloadMBs?: number;
  uploadMBs?: number;
}

/** Small GET (~300-byte JSON, 50 keep-alive connections) and 64 MiB transfers, per contender. */
export async function runHttp(opts: { seconds: number; transfers: number; guardEnv: Record<string, string> }): Promise<{ smallGet: HttpRow[]; transfer: HttpRow[] }> {
  const up = await startNginxUpstream();
  const smallGet: HttpRow[] = [];
  const transfer: HttpRow[] = [];
  try {
    for (const name of CONTENDERS) {
      const c = await startContender(name, up.url, opts.guardEnv);
      try {
        await wrk(`${c.url}/small`, 50, 2); // warm-up: pools, JIT
        const r = await wrk(`${c.url}/small`, 50, opts.seconds);
        smallGet.push({ contender: name, rps: round(r.rps, 0), p50Ms: round(r.p50Ms), p99Ms: round(r.p99Ms), errors: r.errors + r.non2xx });
        process.stderr.write(`  small-get ${name}: ${round(r.rps, 0)} req/s, p99 ${round(r.p99Ms)} ms\n`);
        const downloadMBs = round(await downloadRate(c.url, opts.transfers), 0);
        const uploadMBs = round(await uploadRate(c.url, opts.transfers), 0);
        transfer.push({ contender: name, downloadMBs, uploadMBs });
        process.stderr.write(`  transfer ${name}: down ${downloadMBs} MB/s, up ${uploadMBs} MB/s\n`);
      } finally {
        await c.proc?.stop();
      }
    }
  } finally {
    await up.proc.stop();
  }
  return { smallGet, transfer };
}
