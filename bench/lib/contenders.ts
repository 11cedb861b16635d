import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, ROOT, start, startNginx, startNode, type Proc } from './procs.js';

/**
 * The proxies compared in every HTTP scenario, all in front of the same upstream. `direct`
 * is no proxy; `undici-proxy` is the Node ceiling (a minimal proxy on undici, no checks).
 */
export type ContenderName = 'direct' | 'nginx' | 'undici-proxy' | 'http-proxy' | 'hono-proxy' | 'guard';
export const CONTENDERS: ContenderName[] = ['direct', 'nginx', 'undici-proxy', 'http-proxy', 'hono-proxy', 'guard'];

/** Starts the fast upstream: nginx serving a ~300-byte JSON, a 64 MiB file and an upload sink. */
export async function startNginxUpstream(): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const dir = path.join(os.tmpdir(), `crg-bench-files-${process.pid}`);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(dir, { recursive: true });
  // nginx workers run as an unprivileged user when started as root: let them write here.
  mkdirSync(`/dev/shm/crg-bench-${process.pid}/tmp`, { recursive: true, mode: 0o777 });
  const { chmodSync } = await import('node:fs');
  chmodSync(`/dev/shm/crg-bench-${process.pid}`, 0o777);
  chmodSync(`/dev/shm/crg-bench-${process.pid}/tmp`, 0o777);
  const { deterministicStream } = await import('../../testkit/bytes.js');
  const { createWriteStream } = await import('node:fs');
  const { pipeline } = await import('node:stream/promises');
  await pipeline(deterministicStream(64 * 1024 * 1024), createWriteStream(path.join(dir, 'download.bin')));
  const small = JSON.stringify({
    id: '0b6d0a4e-54f5-4f7e-9d5c-3c1d2a9e8f70',
    external_url: 'https://github.com/coder/coder/commit/abc1234',
    version: 'v2.34.5+abc1234',
    dashboard_url: 'https://coder.example.com',
    telemetry: true,
    workspace_proxy: false,
    agent_api_version: '2.6',
    provisioner_api_version: '1.9',
    upgrade_message: '',
    deployment_id: '6d7c1f0e-3c5e-4b53-9a1b-0f2f4f8a9c11',
  });
  writeFileSync(path.join(dir, 'small.json'), small);
  const proc = await startNginx('upstream', port, `
  server {
    listen 127.0.0.1:${port} backlog=4096;
    client_max_body_size 0;
    sendfile on;
    location = /small { default_type application/json; alias ${dir}/small.json; }
    location = /download { default_type application/octet-stream; alias ${dir}/download.bin; }
    # WebDAV PUT reads the whole body (into tmpfs) before answering, as an upload sink must.
    location /upload/ { root /dev/shm/crg-bench-${process.pid}; dav_methods PUT; create_full_put_path on; client_body_temp_path /dev/shm/crg-bench-${process.pid}/tmp; }
  }`);
  return { proc, url: `http://127.0.0.1:${port}` };
}

/**
 * Starts one contender in front of `upstream`; returns its base URL. `processes` sets
 * nginx's `worker_processes` and the guard's `REINIT_GUARD_WORKERS` alike (equal resources);
 * the Node contenders run one process.
 */
export async function startContender(name: ContenderName, upstream: string, guardEnv: Record<string, string>, processes = 1): Promise<{ proc: Proc | null; url: string }> {
  if (name === 'direct') return { proc: null, url: upstream };
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const target = new URL(upstream);
  if (name === 'nginx') {
    const proc = await startNginx('proxy', port, `
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  upstream coderd { server ${target.host}; keepalive 256; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    client_max_body_size 0;
    location / {
      proxy_pass http://coderd;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
    }
  }`, { workers: processes });
    return { proc, url };
  }
  if (name === 'undici-proxy') return { proc: await startNode(name, 'bench/contenders/undici-proxy.ts', port, { TARGET: upstream }), url };
  if (name === 'http-proxy') return { proc: await startNode(name, 'bench/contenders/http-proxy.ts', port, { TARGET: upstream }), url };
  if (name === 'hono-proxy') return { proc: await startNode(name, 'bench/contenders/hono-proxy.ts', port, { TARGET: upstream }), url };
  const admin = await freePort();
  // BENCH_GUARD_NODE_FLAGS: node flags for the guard (V8 flags NODE_OPTIONS does not accept).
  const flags = (process.env.BENCH_GUARD_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  // BENCH_GUARD_CGROUP: a (v1 or v2) memory cgroup directory to start the guard in, as a
  // container's memory limit does: node sizes its heap from the limit at start.
  const cgroup = process.env.BENCH_GUARD_CGROUP;
  const [cmd, args] = cgroup
    ? ['sh', ['-c', `echo $$ > "$0/cgroup.procs" && exec "$@"`, cgroup, process.execPath, ...flags, 'dist/main.js']]
    : [process.execPath, [...flags, 'dist/main.js']];
  const proc = await start('guard', cmd, args, port, {
    REINIT_GUARD_UPSTREAM: upstream,
    REINIT_GUARD_LISTEN: `127.0.0.1:${port}`,
    REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
    REINIT_GUARD_LOG_LEVEL: 'warn',
    REINIT_GUARD_WORKERS: String(processes),
    ...guardEnv,
  });
  return { proc: Object.assign(proc, { adminUrl: `http://127.0.0.1:${admin}` }), url };
}

export { ROOT };
