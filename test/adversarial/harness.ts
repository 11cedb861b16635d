import net from 'node:net';
import type { Recorded, RecordingUpstream } from '../../testkit/recording-upstream.js';
import { freePort, startNginx, type Proc } from '../../testkit/procs.js';
import { startTestGuard, type TestGuard } from '../support/env.js';

/** What one connection's client saw, and what reached the upstream because of it. */
export interface Outcome {
  /** Status codes of the responses the client received, in order (1xx included). */
  statuses: number[];
  /** Everything the client received. */
  raw: Buffer;
  /** The requests the upstream parsed, summarised for comparison. */
  forwarded: Forwarded[];
  /** Bytes the upstream could not parse as a request. */
  parseErrors: number;
}

/** The parts of a forwarded request the differential compares. */
export interface Forwarded {
  kind: Recorded['kind'];
  method: string;
  url: string;
  host: string[];
  xff: string[];
  /** 'chunked', 'length:N' or 'none': how the body was framed upstream. */
  framing: string;
  bodyBytes: number;
  bodySha256: string;
}

const values = (raw: string[], name: string) => {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
};

/** Summarises a recorded request. */
export function summarise(r: Recorded): Forwarded {
  const te = values(r.rawHeaders, 'transfer-encoding');
  const cl = values(r.rawHeaders, 'content-length');
  return {
    kind: r.kind,
    method: r.method,
    url: r.url,
    host: values(r.rawHeaders, 'host'),
    xff: values(r.rawHeaders, 'x-forwarded-for'),
    framing: te.length ? 'chunked' : cl.length ? `length:${cl.join(',')}` : 'none',
    bodyBytes: r.bodyBytes,
    bodySha256: r.bodySha256,
  };
}

/**
 * Status codes of the responses in a client's byte stream, read one message after the other:
 * a 1xx, 204 or 304 has no body, nor the answer to a HEAD (`methods`: the requests' methods in
 * order, when the stream answers a pipeline); a 101 ends HTTP on the connection; else
 * Content-Length, chunked, or the rest of the stream.
 */
export function statusesOf(raw: Buffer, methods: readonly string[] = []): number[] {
  const text = raw.toString('latin1');
  const out: number[] = [];
  let at = 0;
  let answered = 0;
  while (at < text.length) {
    const end = text.indexOf('\r\n\r\n', at);
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(text.slice(at, at + 16));
    if (end === -1 || !m) break;
    const status = Number(m[1]);
    out.push(status);
    const head = text.slice(at, end);
    at = end + 4;
    if (status < 200 && status !== 101) continue;
    if (methods[answered++] === 'HEAD' || status === 204 || status === 304 || status === 101) continue;
    const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
      for (;;) {
        const eol = text.indexOf('\r\n', at);
        const size = parseInt(text.slice(at, eol), 16);
        if (eol === -1 || Number.isNaN(size)) return out;
        at = eol + 2 + size + 2;
        if (size === 0) break;
      }
    } else if (cl) at += Number(cl[1]);
    else break;
  }
  return out;
}

/**
 * Sends the exact bytes on a fresh connection to `port`, reads until the server closes
 * (or 400 ms of silence, bounded at 3 s), and returns what the client saw and what reached
 * `upstream` meanwhile.
 */
export async function exchange(port: number, bytes: string, upstream: RecordingUpstream): Promise<Outcome> {
  const before = upstream.requests.length;
  const errorsBefore = upstream.parseErrors;
  const raw = await new Promise<Buffer>((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let idle: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(idle);
      clearTimeout(cap);
      socket.destroy();
      resolve(Buffer.concat(chunks));
    };
    const rearm = () => {
      clearTimeout(idle);
      idle = setTimeout(done, 400);
    };
    const cap = setTimeout(done, 3000);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      rearm();
    });
    socket.on('error', () => {});
    socket.on('close', done);
    socket.write(Buffer.from(bytes, 'latin1'));
    rearm();
  });
  // Let the upstream finish parsing what arrived.
  await new Promise((r) => setTimeout(r, 50));
  // The guard polls coderd's /api/v2/buildinfo on its own (version, dependency state): not
  // forwarded client traffic.
  const forwarded = upstream.requests.slice(before).filter((r) => r.url !== '/api/v2/buildinfo');
  return { statuses: statusesOf(raw), raw, forwarded: forwarded.map(summarise), parseErrors: upstream.parseErrors - errorsBefore };
}

/**
 * Starts nginx as the reference proxy in front of `upstreamPort`, configured as an operator
 * would put it in front of coderd: Host as the client sent it, X-Forwarded-For appended,
 * upgrades passed, no buffering, keep-alive upstream.
 */
export async function startReferenceNginx(upstreamPort: number): Promise<{ proc: Proc; port: number }> {
  const port = await freePort();
  const proc = await startNginx('reference', port, `
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  upstream coderd { server 127.0.0.1:${upstreamPort}; keepalive 16; }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    large_client_header_buffers 4 64k;
    location / {
      proxy_pass http://coderd;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }`);
  return { proc, port };
}

/** The guard and the reference nginx, each in front of its own upstream, for one suite. */
export interface AgainstNginx {
  guard: TestGuard;
  nginx: { proc: Proc; port: number };
  /** Stops both proxies and both upstreams. */
  close(): Promise<void>;
}

/**
 * Starts the guard (mode enforce, as deployed; its database is unreachable and never needed,
 * which the suites prove) in front of `upstreams[0]` and the reference nginx in front of
 * `upstreams[1]`. `env` adds to the guard's configuration.
 */
export async function startAgainstNginx(upstreams: [{ port: number; close(): Promise<unknown> }, { port: number; close(): Promise<unknown> }], env: Record<string, string> = {}): Promise<AgainstNginx> {
  const [guardUpstream, nginxUpstream] = upstreams;
  const guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${guardUpstream.port}`,
    REINIT_GUARD_PG_URL: `postgres://guard:pw@127.0.0.1:${await freePort()}/coder`,
    ...env,
  });
  const nginx = await startReferenceNginx(nginxUpstream.port);
  return {
    guard,
    nginx,
    async close() {
      await nginx.proc.stop();
      await guard.guard.close(100);
      await guardUpstream.close();
      await nginxUpstream.close();
    },
  };
}
