import http from 'node:http';
import type { AddressInfo } from 'node:net';
import postgres from 'postgres';
import { goQueryGet, rawQuery, routePath } from '../src/proxy/target.js';
import { PREBUILDS_USER_ID } from '../src/reinit/verdict.js';

/**
 * A stand-in for an *unpatched* coderd 2.34, written from the reference
 * (shared/reference/coder-reinit.md §2, §4), serving only what the guard's tests and demo
 * need: the reinit handler with Go-like SSE, pubsub over PostgreSQL LISTEN/NOTIFY as
 * coderd's own pubsub, and /api/v2/buildinfo. Not coderd's code: its behaviour.
 */
export interface StandinOptions {
  /** Writable URL of the coderd database (the stand-in is coderd: it may write). */
  pgUrl: string;
  /** coderd pings every 15 s; tests shorten it. */
  pingIntervalMs?: number;
  version?: string;
  host?: string;
  port?: number;
  /** Database connections the stand-in may use (coderd has many; storms need more than 4). */
  poolSize?: number;
}

export interface Standin {
  url: string;
  port: number;
  /** Requests served on /reinit, for assertions. */
  reinitRequests: number;
  /**
   * Every request that reached the stand-in, whatever its path, but the guard's own polls of
   * /api/v2/buildinfo (for "never forwarded").
   */
  requests: number;
  /** TCP connections open to the stand-in now (the guard's upstream connections, in tests). */
  openConnections: number;
  close(): Promise<void>;
}

const SSE_HEADERS = {
  'Content-Type': 'text/event-stream',
  'Cache-Control': 'no-cache',
  Connection: 'keep-alive',
  'X-Accel-Buffering': 'no',
};

/** As coderd's httpapi.Write: compact JSON and a newline (Go's json.Encoder), charset=utf-8. */
function writeJson(res: http.ServerResponse, status: number, body: unknown) {
  const json = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(json) });
  res.end(json);
}

/** Go's strconv.ParseBool for `wait`; errors count as false. */
const parseBool = (v: string | null) => v !== null && ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v);

function sessionToken(req: http.IncomingMessage, url: URL): string | null {
  const header = req.headers['coder-session-token'];
  if (typeof header === 'string' && header) return header;
  const cookie = /(?:^|;\s*)coder_session_token=([^;]+)/.exec(req.headers.cookie ?? '');
  if (cookie) return cookie[1] as string;
  return url.searchParams.get('coder_session_token');
}

/** Starts the stand-in on loopback. */
export async function startCoderdStandin(opts: StandinOptions): Promise<Standin> {
  const sql = postgres(opts.pgUrl, { max: opts.poolSize ?? 4, onnotice: () => {} });
  const pingMs = opts.pingIntervalMs ?? 15_000;
  const version = opts.version ?? 'v2.34.3+4653f32';
  const state = { reinitRequests: 0, requests: 0 };

  const reinit = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL, wait: string | null) => {
    state.reinitRequests++;
    const token = sessionToken(req, url);
    const uuidish = token && /^[0-9a-f-]{36}$/i.test(token) ? token : null;
    // 1. The agent's workspace (GetWorkspaceByAgentID).
    const [ws] = uuidish
      ? await sql<{ id: string; owner_id: string }[]>`
          SELECT w.id, w.owner_id FROM workspace_agents a
          JOIN workspace_resources r ON r.id = a.resource_id
          JOIN workspace_builds b ON b.job_id = r.job_id
          JOIN workspaces w ON w.id = b.workspace_id
          WHERE a.auth_token = ${uuidish}::uuid AND NOT a.deleted`
      : [];
    if (!ws) return writeJson(res, 401, { message: 'Workspace agent not authorized.', detail: 'Try logging in again.' });

    // 2. Subscribe first, so a claim published during the checks is not lost.
    const pending: string[] = [];
    let deliver: (payload: string) => void = (p) => pending.push(p);
    const sub = await sql.listen(`prebuild_claimed_${ws.id}`, (payload) => deliver(payload));
    let seeded: string | null = null;

    // 3-4. The durable check, only with wait=true and a workspace no longer a prebuild.
    if (parseBool(wait) && ws.owner_id !== PREBUILDS_USER_ID) {
      const [first] = await sql<{ initiator_id: string }[]>`
        SELECT initiator_id FROM workspace_builds WHERE workspace_id = ${ws.id} AND build_number = 1`;
      if (!first || first.initiator_id !== PREBUILDS_USER_ID) {
        await sub.unlisten();
        return writeJson(res, 409, {
          message: 'Workspace is not a prebuilt workspace waiting to be claimed.',
          detail: 'This endpoint is only for agents running in prebuilt workspaces.',
        });
      }
      const [latest] = await sql<{ completed_at: Date | null; error: string | null }[]>`
        SELECT j.completed_at, j.error FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = ${ws.id} ORDER BY b.build_number DESC LIMIT 1`;
      if (latest?.completed_at && latest.error === null) {
        // The bug: seeded whatever the latest build is.
        seeded = JSON.stringify({ workspace_id: ws.id, reason: 'prebuild_claimed', owner_id: ws.owner_id });
      } else if (latest?.completed_at) {
        await sub.unlisten();
        return writeJson(res, 409, { message: 'Claim build failed permanently.', detail: latest.error ?? '' });
      }
    }

    // 5. SSE, Go style: headers go out with the first write, not before.
    res.writeHead(200, SSE_HEADERS);
    const send = (chunk: string) => res.write(chunk);
    const event = (json: string) => send(`event: data\ndata: ${json}\n\n`);
    if (seeded) event(seeded);
    deliver = (payload) => event(payload);
    for (const p of pending.splice(0)) event(p);
    const ping = setInterval(() => send('event: ping\n\n'), pingMs);
    res.once('close', () => {
      clearInterval(ping);
      void sub.unlisten().catch(() => {});
    });
  };

  const server = http.createServer((req, res) => {
    const target = req.url ?? '/';
    if (!target.startsWith('/api/v2/buildinfo')) state.requests++;
    let url: URL;
    try {
      url = new URL(target.startsWith('/') ? `http://standin${target}` : target);
    } catch {
      return writeJson(res, 400, { message: 'Bad Request.', detail: '' });
    }
    // coderd routes on the decoded path after collapsing slashes (singleSlashMW), and reads
    // `wait` with Go's query parser: the same rules the guard routes by.
    const path = routePath(target);
    if (req.method === 'GET' && path === '/api/v2/workspaceagents/me/reinit') {
      reinit(req, res, url, goQueryGet(rawQuery(target), 'wait')).catch((err: unknown) => {
        if (!res.headersSent) writeJson(res, 500, { message: 'Internal error.', detail: String(err) });
        else res.destroy();
      });
    } else if (path === '/api/v2/buildinfo') {
      writeJson(res, 200, { external_url: 'https://github.com/coder/coder', version, dashboard_url: '', telemetry: false, workspace_proxy: false, deployment_id: 'standin' });
    } else {
      writeJson(res, 404, { message: 'Route not found.', detail: '' });
    }
  });
  server.keepAliveTimeout = 65_000;
  let open = 0;
  server.on('connection', (socket) => {
    open++;
    socket.once('close', () => open--);
  });
  // Go's net.Listen asks for the kernel's maximum accept queue (net.core.somaxconn), not Node's 511.
  await new Promise<void>((resolve) => server.listen({ port: opts.port ?? 0, host: opts.host ?? '127.0.0.1', backlog: 65535 }, resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get reinitRequests() {
      return state.reinitRequests;
    },
    get requests() {
      return state.requests;
    },
    get openConnections() {
      return open;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await sql.end({ timeout: 1 });
    },
  };
}
