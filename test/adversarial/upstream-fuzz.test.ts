import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { readMessages, type Message } from '../../testkit/http-messages.js';
import { startScriptedUpstream, type ScriptedUpstream } from '../../testkit/scripted-upstream.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';
import { generateResponse, prng, type GeneratedResponse } from './responses.js';

/**
 * Seeded, bounded fuzzing of what coderd can answer. Odd responses (status lines, reason
 * phrases, framing conflicts, trailers, 1xx valid and malformed, 101, bodies on
 * HEAD/204/304, and their framing headers without a body) are paired with
 * client variants (HTTP/1.1 keep-alive, HTTP/1.0, HEAD, an inspected /reinit). The guard
 * runs as its own process: it must survive every case; each client gets a faithful relay
 * (coderd's status and body, as Node's own client reads coderd directly), a 502, or a
 * closed connection; a response that is plainly valid must be relayed faithfully, with its
 * 1xx (but 100) as sent; no 1xx reaches an HTTP/1.0 client; and the next request on a fresh
 * connection must work.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 20261128);
const CASES = Number(process.env.FUZZ_CASES ?? 240);
const VARIANTS = ['GET/1.1', 'GET/1.0', 'HEAD/1.1', 'reinit'] as const;
type Variant = (typeof VARIANTS)[number];

interface Seen {
  status: number | null;
  body: Buffer;
  complete: boolean;
  /** Everything the client received (the guard's answers only). */
  raw?: Buffer;
}

/** Reads one response (skipping 1xx) from a raw byte stream, or says it is incomplete. */
function parseOne(raw: Buffer, head: boolean, closed: boolean): Seen | null {
  const text = raw.toString('latin1');
  let at = 0;
  for (;;) {
    const end = text.indexOf('\r\n\r\n', at);
    if (end === -1) return closed ? { status: null, body: Buffer.alloc(0), complete: false } : null;
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text.slice(at))?.[1] ?? NaN);
    const headers = text.slice(at, end);
    at = end + 4;
    if (status >= 100 && status < 200 && status !== 101) continue;
    const rest = raw.subarray(at);
    if (head || status === 204 || status === 304 || status === 101) return { status, body: Buffer.alloc(0), complete: true };
    const cl = /\r\ncontent-length: *(\d+)/i.exec(headers);
    if (cl) {
      const n = Number(cl[1]);
      if (rest.length >= n) return { status, body: rest.subarray(0, n), complete: true };
      return closed ? { status, body: rest, complete: false } : null;
    }
    if (/\r\ntransfer-encoding: *chunked/i.test(headers)) {
      const parts: Buffer[] = [];
      let p = 0;
      for (;;) {
        const eol = rest.indexOf('\r\n', p);
        if (eol === -1) return closed ? { status, body: Buffer.concat(parts), complete: false } : null;
        const size = parseInt(rest.subarray(p, eol).toString('latin1'), 16);
        if (size === 0) {
          // The trailer section ends with an empty line.
          const done = rest.indexOf('\r\n\r\n', Math.max(0, eol - 2)) !== -1;
          if (done) return { status, body: Buffer.concat(parts), complete: true };
          return closed ? { status, body: Buffer.concat(parts), complete: false } : null;
        }
        if (rest.length < eol + 2 + size + 2) return closed ? { status, body: Buffer.concat(parts), complete: false } : null;
        parts.push(rest.subarray(eol + 2, eol + 2 + size));
        p = eol + 2 + size + 2;
      }
    }
    // Delimited by the connection's end.
    return closed ? { status, body: rest, complete: true } : null;
  }
}

/** Sends one request on a fresh connection and reads one response (bounded at 2 s). */
function ask(port: number, request: string, head: boolean): Promise<Seen> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let settled = false;
    const settle = (closed: boolean) => {
      if (settled) return;
      const seen = parseOne(Buffer.concat(chunks), head, closed);
      if (!seen) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...seen, raw: Buffer.concat(chunks) });
    };
    const timer = setTimeout(() => settle(true), 2000);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      settle(false);
    });
    socket.on('error', () => {});
    socket.on('close', () => settle(true));
    socket.write(request);
  });
}

/**
 * What Node's own client reads straight from the upstream, the oracle of "faithful": the
 * status of the response head, and the body with whether it completed. 'error' when no
 * response head could be read at all.
 */
function direct(url: string, method: string): Promise<Seen | 'error'> {
  return new Promise((resolve) => {
    let seen: Seen | null = null;
    const chunks: Buffer[] = [];
    const settle = (complete: boolean) => {
      if (!seen) return resolve('error');
      resolve({ ...seen, body: Buffer.concat(chunks), complete });
    };
    const req = http.request(url, { method, agent: false, timeout: 2000 }, (res) => {
      seen = { status: res.statusCode ?? null, body: Buffer.alloc(0), complete: false };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => settle(res.complete));
      res.on('error', () => settle(false));
    });
    req.on('upgrade', (_res, socket) => {
      socket.destroy();
      resolve('error');
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => settle(false));
    req.end();
  });
}

/**
 * Whether a generated response is plainly valid for the request: then the guard owes a
 * faithful relay, not a 502 or a cut.
 */
function plainlyValid(r: GeneratedResponse, variant: Variant): boolean {
  return r.valid && !(variant === 'HEAD/1.1' && r.hasBody);
}

/** The 1xx responses at the start of `raw`, as a client reads them (status, reason, header lines). */
function interims(raw: Buffer): Array<Pick<Message, 'status' | 'reason' | 'headers'>> {
  const out: Array<Pick<Message, 'status' | 'reason' | 'headers'>> = [];
  for (const m of readMessages(raw, [])) {
    if (!m.interim) break;
    out.push({ status: m.status, reason: m.reason, headers: m.headers });
  }
  return out;
}

let upstream: ScriptedUpstream;
let guard: GuardProcess;
const cases = (() => {
  const rnd = prng(SEED);
  return Array.from({ length: CASES }, (_, i) => {
    const variant = VARIANTS[i % VARIANTS.length] as Variant;
    return { i, variant, response: generateResponse(rnd, variant === 'HEAD/1.1') };
  });
})();

beforeAll(async () => {
  upstream = await startScriptedUpstream((target) => {
    const m = /(?:\/fuzz\/|[?&]case=)(\d+)/.exec(target);
    const c = m ? cases[Number(m[1])] : undefined;
    if (!c) return null;
    const then = !plainlyValid(c.response, c.variant) ? 'later' : c.response.closeDelimited ? 'end' : 'keep';
    return { bytes: c.response.bytes, then };
  });
  guard = await startGuardProcess({
    REINIT_GUARD_UPSTREAM: upstream.url,
    REINIT_GUARD_PG_URL: `postgres://guard:pw@127.0.0.1:${await freePort()}/coder`,
    REINIT_GUARD_DB_TIMEOUT: '100ms',
    REINIT_GUARD_DB_CONNECT_TIMEOUT: '100ms',
    REINIT_GUARD_PEEK_TIMEOUT: '300ms',
  });
}, 60_000);

afterAll(async () => {
  await guard?.stop();
  await upstream?.close();
});

describe(`upstream responses, seed ${SEED}, ${CASES} cases`, () => {
  it('the guard survives every case; clients get a faithful relay, a 502 or a closed connection; the next request works', async () => {
    const port = Number(new URL(guard.url).port);
    const failures: string[] = [];
    let faithful = 0;
    for (const { i, variant, response } of cases) {
      const [method, version] = variant === 'reinit' ? ['GET', '1.1'] : variant.split('/');
      const target = variant === 'reinit' ? `/api/v2/workspaceagents/me/reinit?wait=true&case=${i}` : `/fuzz/${i}`;
      const oracle = await direct(`${upstream.url}${target}`, method!);
      const seen = await ask(port, `${method} ${target} HTTP/${version}\r\nHost: coder.example.com\r\n\r\n`, method === 'HEAD');
      // Faithful: coderd's status, and when both sides read a whole body, the same bytes.
      const sameHead = oracle !== 'error' && seen.status === oracle.status;
      const sameBody = oracle !== 'error' && (!seen.complete || !oracle.complete || seen.body.equals(oracle.body));
      const isFaithful = sameHead && sameBody && seen.complete && (oracle as Seen).complete;
      const is502 = seen.status === 502 && (method === 'HEAD' || /"message":"Failed to reach coderd\."/.test(seen.body.toString()));
      const closedBeforeHead = seen.status === null;
      if (isFaithful) faithful++;
      const label = `#${i} ${variant} [${response.name}] -> ${seen.status}${seen.complete ? '' : ' (cut)'}, direct ${oracle === 'error' ? 'error' : `${oracle.status}${oracle.complete ? '' : ' (cut)'}`}`;
      if (!(sameHead && sameBody) && !is502 && !closedBeforeHead) failures.push(`unfaithful: ${label}`);
      if (plainlyValid(response, variant) && !isFaithful) failures.push(`valid response not relayed faithfully: ${label}`);
      // 1xx: never to an HTTP/1.0 client (RFC 9110 §15.2); to others, before a valid final
      // response, coderd's as sent, less 100 Continue (hop-by-hop).
      const relayed = interims(seen.raw ?? Buffer.alloc(0));
      if (version === '1.0' && relayed.length) failures.push(`1xx sent to an HTTP/1.0 client: ${label}`);
      const sent = interims(Buffer.from(response.interim, 'latin1')).filter((m) => m.status !== 100);
      if (version !== '1.0' && plainlyValid(response, variant) && JSON.stringify(relayed) !== JSON.stringify(sent)) {
        failures.push(`1xx not relayed as sent: ${label}: ${JSON.stringify(relayed)}`);
      }
      // After an odd answer the upstream drops the connection shortly: check on a fresh
      // one (a request racing coderd's close fails behind any proxy).
      if (!plainlyValid(response, variant) || response.closeDelimited) await new Promise((r) => setTimeout(r, 60));
      const next = await ask(port, 'GET /ok HTTP/1.1\r\nHost: coder.example.com\r\n\r\n', false);
      if (next.status !== 200 || next.body.toString() !== 'good') failures.push(`next request broken after ${label}: ${next.status}`);
      if (guard.child.exitCode !== null) {
        failures.push(`guard exited with ${guard.child.exitCode} at ${label}`);
        break;
      }
    }
    expect(failures).toEqual([]);
    expect(guard.child.exitCode).toBeNull();
    // The generator must exercise the happy path too, or "no failures" means little.
    expect(faithful).toBeGreaterThan(CASES / 4);
  }, 120_000);
});
