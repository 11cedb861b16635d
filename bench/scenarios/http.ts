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
  /** nginx worker_processes / REINIT_GUARD_WORKERS (1 for the other contenders). */
  processes: number;
  rps?: number;
  p50Ms?: number;
  p99Ms?: number;
  errors?: number;
  downloadMBs?: number;
  uploadMBs?: number;
}

/** The contenders of one round: at N = 1 everyone; at N > 1 only the two that scale out. */
const roundOf = (processes: number): ContenderName[] => (processes === 1 ? CONTENDERS : ['nginx', 'guard']);

/**
 * Small GET (~300-byte JSON, 50 keep-alive connections) and 64 MiB transfers, per
 * contender, at each process count in `processes` (equal resources: nginx
 * `worker_processes N` against `REINIT_GUARD_WORKERS=N`, same upstream, same wrk, one run).
 */
export async function runHttp(opts: { seconds: number; transfers: number; guardEnv: Record<string, string>; processes: number[] }): Promise<{ smallGet: HttpRow[]; transfer: HttpRow[] }> {
  const up = await startNginxUpstream();
  const smallGet: HttpRow[] = [];
  const transfer: HttpRow[] = [];
  try {
    for (const processes of opts.processes) {
      for (const name of roundOf(processes)) {
        const c = await startContender(name, up.url, opts.guardEnv, processes);
        try {
          await wrk(`${c.url}/small`, 50, 2); // warm-up: pools, JIT
          const r = await wrk(`${c.url}/small`, 50, opts.seconds);
          smallGet.push({ contender: name, processes, rps: round(r.rps, 0), p50Ms: round(r.p50Ms), p99Ms: round(r.p99Ms), errors: r.errors + r.non2xx });
          process.stderr.write(`  small-get ${name} N=${processes}: ${round(r.rps, 0)} req/s, p99 ${round(r.p99Ms)} ms\n`);
          const downloadMBs = round(await downloadRate(c.url, opts.transfers), 0);
          const uploadMBs = round(await uploadRate(c.url, opts.transfers), 0);
          transfer.push({ contender: name, processes, downloadMBs, uploadMBs });
          process.stderr.write(`  transfer ${name} N=${processes}: down ${downloadMBs} MB/s, up ${uploadMBs} MB/s\n`);
        } finally {
          await c.proc?.stop();
        }
      }
    }
  } finally {
    await up.proc.stop();
  }
  return { smallGet, transfer };
}
