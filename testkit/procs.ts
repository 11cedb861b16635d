import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './pg.js';

export { freePort };
export const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** A process a test or the bench started, with its output kept for errors. */
export interface Proc {
  name: string;
  child: ChildProcess;
  port: number;
  log: () => string;
  stop(): Promise<void>;
  /** Resident set size of the process and its children, bytes. */
  rss(): number;
}

/** Waits until something accepts TCP connections on the port. */
export async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), r(true)));
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const rssOf = (pid: number | undefined): number => {
  if (!pid) return 0;
  let total = 0;
  const visit = (p: number) => {
    try {
      total += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0) * 1024;
      const kids = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(/\s+/) : []) visit(Number(k));
    } catch {
      /* gone */
    }
  };
  visit(pid);
  return total;
};

/** Spawns a command and waits for its port. */
export async function start(name: string, cmd: string, args: string[], port: number, env: Record<string, string> = {}): Promise<Proc> {
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (c: Buffer) => {
    out = (out + c.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    await Promise.race([waitForPort(port), exited.then(() => Promise.reject(new Error(`${name} exited: ${out}`)))]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    name,
    child,
    port,
    log: () => out,
    rss: () => rssOf(child.pid),
    async stop() {
      if (child.exitCode !== null) return;
      // SIGINT: the guard's shutdown without the delay for load balancers (SIGTERM's).
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Runs a TypeScript file of this repo as its own Node process. */
export const startNode = (name: string, file: string, port: number, env: Record<string, string> = {}) =>
  start(name, process.execPath, ['--import', 'tsx', file], port, { PORT: String(port), ...env });

let nginxRuns = 0;

/**
 * Starts nginx in the foreground with a config body for its `http` block; `workers` sets
 * `worker_processes` (1 by default). Its files live in a fresh folder that its workers
 * (an unprivileged user when started as root) may write to.
 */
export async function startNginx(name: string, port: number, httpBlock: string, opts: { workers?: number } = {}): Promise<Proc> {
  const dir = path.join(os.tmpdir(), `crg-nginx-${name}-${process.pid}-${++nginxRuns}`);
  for (const sub of ['', 'logs', 'body', 'proxy']) {
    mkdirSync(path.join(dir, sub), { recursive: true });
    chmodSync(path.join(dir, sub), 0o777);
  }
  const conf = `
worker_processes ${opts.workers ?? 1};
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  ${httpBlock}
}`;
  writeFileSync(path.join(dir, 'nginx.conf'), conf);
  return start(name, 'nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], port);
}
