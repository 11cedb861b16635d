import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCountingUpstream, type CountingUpstream } from '../../testkit/counting-upstream.js';
import type { Proc } from '../../testkit/procs.js';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';
import { startScriptedUpstream, type ScriptedUpstream } from '../../testkit/scripted-upstream.js';
import { startAgainstNginx, statusesOf, type AgainstNginx } from './harness.js';
import { generateResponse, prng, type GeneratedResponse } from './responses.js';

/**
 * Pipelining through the guard and through nginx (the reference proxy), each in front of
 * its own counting upstream (issue #20): depth, unsafe methods, aborts mid-pipeline,
 * absolute-form targets, HTTP/0.9 and HTTP/2.0 request lines, then seeded random
 * pipelines. For every case the guard never has more than one request of the connection
 * open upstream, leaves none open once its client is gone, answers what the case pins, and
 * answers and forwards what nginx does unless the case names the difference.
 */
let guardUpstream: CountingUpstream;
let nginxUpstream: CountingUpstream;
let guard: TestGuard;
let nginx: { proc: Proc; port: number };

let pair: AgainstNginx | undefined;

beforeAll(async () => {
  [guardUpstream, nginxUpstream] = await Promise.all([startCountingUpstream(), startCountingUpstream()]);
  pair = await startAgainstNginx([guardUpstream, nginxUpstream]);
  ({ guard, nginx } = pair);
});

afterAll(async () => {
  await pair?.close();
});

/** One connection's bytes, and how the client behaves. */
interface Case {
  name: string;
  bytes: string;
  /** Final answers to wait for (default: what `guard` pins). */
  answers?: number;
  /** The client leaves once its proxy's upstream saw a request, or once answer bytes came. */
  abort?: 'first-arrival' | 'first-bytes';
  /** The status codes the guard's client must see, in order. */
  guard?: number[];
  /** Why the guard and nginx differ, when they do. */
  differs?: string;
}

/** What a client saw, and what reached the upstream because of it. */
interface Outcome {
  statuses: number[];
  arrived: string[];
  events: string[];
  maxOpen: number;
}

const get = (target: string, extra = '') => `GET ${target} HTTP/1.1\r\nHost: h\r\n${extra}\r\n`;
const many = (n: number, f: (i: number) => string) => Array.from({ length: n }, (_, i) => f(i)).join('');
const finals = (statuses: number[]) => statuses.filter((s) => s >= 200 || s === 101).length;

/** The methods of the requests in a pipeline, in order (bodies here are lowercase, never a request line). */
const methodsOf = (bytes: string) => [...bytes.matchAll(/(?<![A-Z])(GET|HEAD|PUT|POST|DELETE) \S+(?: HTTP|\r\n)/g)].map((m) => m[1]!);


/**
 * Puts `tag` at the end of every request target in `bytes`: the upstream then tells this
 * run's requests from a late one of an earlier run (a proxy may forward one more request
 * before it sees its client leave).
 */
const tagged = (bytes: string, tag: string) => bytes.replace(/(?<![A-Z])(GET|HEAD|PUT|POST|DELETE) (\S+)(?= HTTP|\r\n)/g, `$1 $2${tag}`);
let runs = 0;
/** A fresh tag for one case, the same for the guard's run and nginx's. */
const nextTag = () => `~${runs++}`;

/**
 * Sends the case's bytes (targets tagged) on a fresh connection to `port` and reads until
 * the proxy closes, the case's answers arrived, or the client leaves as the case says
 * (bounded at 20 s); then waits until none of the case's requests is open upstream.
 */
async function run(port: number, upstream: CountingUpstream, c: Case, tag: string): Promise<Outcome> {
  const want = c.answers ?? c.guard?.length ?? 1;
  const methods = methodsOf(c.bytes);
  const mine = () => upstream.events.filter((e) => e.endsWith(tag));
  const raw = await new Promise<Buffer>((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let poll: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(cap);
      clearInterval(poll);
      socket.destroy();
      resolve(Buffer.concat(chunks));
    };
    const cap = setTimeout(done, 20_000);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (c.abort === 'first-bytes' || (!c.abort && finals(statusesOf(Buffer.concat(chunks), methods)) >= want)) done();
    });
    socket.on('error', () => {});
    socket.on('close', done);
    socket.write(Buffer.from(tagged(c.bytes, tag), 'latin1'));
    if (c.abort === 'first-arrival') poll = setInterval(() => mine().length > 0 && done(), 5);
  });
  // Open requests of this run, and the most ever open at once, from what the upstream saw.
  const replay = (events: string[]) => {
    let open = 0;
    let max = 0;
    for (const e of events) {
      if (e.startsWith('arrive ')) max = Math.max(max, ++open);
      else if (!e.startsWith('upgrade ')) open--;
    }
    return { open, max };
  };
  await waitFor(() => replay(mine()).open === 0, 10_000, 'nothing left open upstream');
  const events = mine();
  const untag = (s: string) => s.slice(0, -tag.length);
  return {
    statuses: statusesOf(raw, methods),
    arrived: upstream.arrived.filter((t) => t.endsWith(tag)).map(untag),
    events: events.map(untag),
    maxOpen: replay(events).max,
  };
}

const CASES: Case[] = [
  // Depth
  { name: 'depth 2', bytes: get('/hold/30/1') + get('/p/2'), guard: [200, 200] },
  { name: 'depth 10', bytes: many(10, (i) => get(i % 2 ? `/p/${i}` : `/hold/5/${i}`)), guard: Array(10).fill(200) },
  { name: 'depth 100', bytes: many(100, (i) => get(`/p/${i}`)), guard: Array(100).fill(200) },
  { name: 'HEAD between GETs', bytes: get('/hold/20/1') + 'HEAD /p/2 HTTP/1.1\r\nHost: h\r\n\r\n' + get('/p/3'), guard: [200, 200, 200] },
  { name: 'HTTP/1.0 keep-alive, pipelined', bytes: 'GET /hold/20/1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\nGET /p/2 HTTP/1.0\r\nHost: h\r\n\r\n', guard: [200, 200] },
  // Unsafe methods: one after the other, never in parallel (RFC 9112 §9.3.2)
  {
    name: 'PUT, DELETE, POST pipelined',
    bytes: 'PUT /hold/50/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcDELETE /2 HTTP/1.1\r\nHost: h\r\n\r\nPOST /hold/10/3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n',
    guard: [200, 200, 200],
  },
  // Aborts mid-pipeline
  { name: 'abort mid-pipeline: streams', bytes: get('/watch/1') + get('/watch/2') + get('/watch/3'), abort: 'first-bytes' },
  { name: 'abort mid-pipeline: the first request held', bytes: get('/hold/300/1') + get('/p/2') + get('/p/3'), abort: 'first-arrival' },
  { name: 'abort mid-pipeline: a partial request last', bytes: get('/hold/300/1') + get('/p/2') + 'GET /p/3 HTTP/1.1\r\nHo', abort: 'first-arrival' },
  // Targets and versions
  {
    name: 'absolute form, pipelined',
    bytes: get('http://coder.example/hold/20/1', 'X-A: 1\r\n') + 'GET http://coder.example/p/2 HTTP/1.1\r\nHost: other.example\r\n\r\n',
    guard: [200, 200],
  },
  { name: 'HTTP/0.9 request line', bytes: 'GET /p/1\r\n\r\n', guard: [400], differs: "nginx answers HTTP/0.9 in HTTP/0.9 (no status line); the guard answers Go's 400" },
  {
    name: 'HTTP/0.9 request line after a request',
    bytes: get('/hold/20/1') + 'GET /p/2\r\n\r\n',
    guard: [200, 400],
    differs: "nginx answers HTTP/0.9 in HTTP/0.9 (no status line); the guard answers Go's 400",
  },
  { name: 'HTTP/2.0 request line', bytes: 'GET /p/1 HTTP/2.0\r\nHost: h\r\n\r\n', guard: [505] },
  { name: 'HTTP/2.0 request line after a request', bytes: get('/hold/20/1') + 'GET /p/2 HTTP/2.0\r\nHost: h\r\n\r\n' + get('/p/3'), guard: [200, 505] },
  { name: 'HTTP/3.0 request line after a request', bytes: get('/hold/20/1') + 'GET /p/2 HTTP/3.0\r\nHost: h\r\n\r\n', guard: [200, 505] },
  // What ends a pipeline
  { name: 'garbage after pipelined requests', bytes: get('/hold/20/1') + get('/hold/40/2') + 'GARBAGE\r\n\r\n', guard: [200, 200, 400] },
  { name: 'a refusal that closes the connection, then more', bytes: get('/hold/20/1') + 'POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' + get('/p/3'), guard: [200, 501] },
  { name: 'Connection: close, then more', bytes: get('/hold/20/1', 'Connection: close\r\n') + get('/p/2'), guard: [200] },
  { name: 'an upgrade after a held request', bytes: get('/hold/50/1') + get('/ws', 'Connection: Upgrade\r\nUpgrade: websocket\r\n'), guard: [200, 101] },
];

/** The guard's own invariants, whatever the case. */
function checkGuard(o: Outcome, aborted: boolean): void {
  // One request of the connection open upstream at a time: every arrival follows the end
  // of the one before.
  expect(o.maxOpen).toBeLessThanOrEqual(1);
  for (let i = 0; i < o.events.length; i += 2) expect(o.events[i]).toMatch(/^(arrive|upgrade) /);
  // Never more forwarded than answered. A client that left may have its request in flight
  // cut short, and one more may go before the guard sees it gone: its leaving shows only
  // when the guard next reads (or, past PAUSE_AFTER waiting requests, writes) its socket.
  const forwarded = o.arrived.length;
  expect(forwarded).toBeLessThanOrEqual(finals(o.statuses) + (aborted ? 2 : 0));
}

describe.each(CASES)('$name', (c) => {
  let viaGuard: Outcome;
  let viaNginx: Outcome;
  beforeAll(async () => {
    const tag = nextTag();
    [viaGuard, viaNginx] = await Promise.all([run(guard.guard.proxyAddress.port, guardUpstream, c, tag), run(nginx.port, nginxUpstream, c, tag)]);
  });

  it('one request in flight upstream, none left open, never more forwarded than answered', () => checkGuard(viaGuard, c.abort !== undefined));

  if (c.guard) {
    it(`answers ${JSON.stringify(c.guard)}`, () => expect(viaGuard.statuses).toEqual(c.guard));
  }

  it(c.differs ? `differs from nginx, as intended: ${c.differs}` : 'answers and forwards as nginx does', () => {
    const comparable = (o: Outcome) => ({ statuses: o.statuses, arrived: o.arrived, events: o.events });
    if (c.differs) expect(comparable(viaGuard)).not.toEqual(comparable(viaNginx));
    else expect(comparable(viaGuard)).toEqual(comparable(viaNginx));
  });
});

/**
 * Seeded random pipelines (FUZZ_SEED replays one run, PIPELINE_FUZZ_CASES widens it): a
 * mix of methods, bodies, holds, HEAD, absolute forms and HTTP/1.0 keep-alive, some cut
 * short by their client. The guard keeps its invariants on every one; a pipeline its client
 * reads to the end is answered and forwarded exactly as nginx does.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 20261204);
const FUZZ_CASES = Number(process.env.PIPELINE_FUZZ_CASES ?? 30);

function randomPipeline(rnd: () => number, n: number): Case {
  const depth = 1 + Math.floor(rnd() * (rnd() < 0.2 ? 60 : 8));
  let bytes = '';
  for (let i = 0; i < depth; i++) {
    const path = rnd() < 0.3 ? `/hold/${1 + Math.floor(rnd() * 20)}/${i}` : `/p/${i}`;
    const r = rnd();
    if (r < 0.35) bytes += get(path);
    else if (r < 0.45) bytes += `HEAD ${path} HTTP/1.1\r\nHost: h\r\n\r\n`;
    else if (r < 0.55) bytes += get(`http://coder.example${path}`);
    else if (r < 0.65) bytes += `GET ${path} HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n`;
    else if (r < 0.8) {
      const body = 'x'.repeat(Math.floor(rnd() * 300));
      bytes += `${rnd() < 0.5 ? 'PUT' : 'POST'} ${path} HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    } else if (r < 0.9) {
      const body = 'y'.repeat(1 + Math.floor(rnd() * 300));
      bytes += `POST ${path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    } else bytes += `DELETE ${path} HTTP/1.1\r\nHost: h\r\n\r\n`;
  }
  const abort = rnd() < 0.25 ? 'first-arrival' : undefined;
  return { name: `seed ${SEED} #${n}: depth ${depth}${abort ? ', the client leaves early' : ''}`, bytes, answers: depth, abort, guard: abort ? undefined : Array(depth).fill(200) };
}

const rnd = prng(SEED);
const FUZZED = Array.from({ length: FUZZ_CASES }, (_, n) => randomPipeline(rnd, n));

describe('seeded random pipelines', () => {
  it.each(FUZZED)('$name', async (c) => {
    const tag = nextTag();
    const [viaGuard, viaNginx] = await Promise.all([run(guard.guard.proxyAddress.port, guardUpstream, c, tag), run(nginx.port, nginxUpstream, c, tag)]);
    checkGuard(viaGuard, c.abort !== undefined);
    if (c.abort) return;
    expect(viaGuard.statuses).toEqual(c.guard);
    expect({ statuses: viaGuard.statuses, arrived: viaGuard.arrived, events: viaGuard.events }).toEqual({ statuses: viaNginx.statuses, arrived: viaNginx.arrived, events: viaNginx.events });
  });
});

/**
 * Seeded odd answers of coderd's inside a pipeline (ODD_CASES widens it): the first request
 * of a connection gets a generated response (odd statuses, framing conflicts, bad headers,
 * 1xx, 101) and a well-formed `GET /ok` waits behind it. Whatever becomes of the first
 * answer (relayed, a 502, a cut connection), the second is either coderd's own answer to
 * it, whole and after the first, or never comes: never mixed into another. When the first
 * answer is plainly valid, both arrive.
 */
const ODD_CASES = Number(process.env.ODD_CASES ?? 60);

interface Message {
  status: number;
  body: string;
  complete: boolean;
}

/** The final answers in a client's byte stream, read in order (`methods`: its requests'). */
function messagesOf(raw: Buffer, methods: string[], closed: boolean): Message[] {
  const text = raw.toString('latin1');
  const out: Message[] = [];
  let at = 0;
  while (at < text.length) {
    const end = text.indexOf('\r\n\r\n', at);
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(text.slice(at, at + 16));
    if (end === -1 || !m) break;
    const status = Number(m[1]);
    const head = text.slice(at, end);
    at = end + 4;
    if (status < 200 && status !== 101) continue;
    const bodiless = methods[out.length] === 'HEAD' || status === 204 || status === 304 || status === 101;
    const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (bodiless) out.push({ status, body: '', complete: true });
    else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
      let body = '';
      for (;;) {
        const eol = text.indexOf('\r\n', at);
        const size = parseInt(text.slice(at, eol), 16);
        if (eol === -1 || Number.isNaN(size) || text.length < eol + 2 + size + 2) return [...out, { status, body, complete: false }];
        if (size === 0) {
          // The last chunk, then trailer lines up to an empty line.
          const trailerEnd = text.indexOf('\r\n\r\n', eol);
          if (trailerEnd === -1) return [...out, { status, body, complete: false }];
          at = trailerEnd + 4;
          break;
        }
        body += text.slice(eol + 2, eol + 2 + size);
        at = eol + 2 + size + 2;
      }
      out.push({ status, body, complete: true });
    } else if (cl) {
      const n = Number(cl[1]);
      out.push({ status, body: text.slice(at, at + n), complete: text.length >= at + n });
      at += n;
    } else {
      out.push({ status, body: text.slice(at), complete: closed });
      break;
    }
  }
  return out;
}

describe('seeded odd answers inside a pipeline', () => {
  let scripted: ScriptedUpstream;
  let oddGuard: TestGuard;
  const rndOdd = prng(SEED + 1);
  const odd: Array<{ i: number; method: 'GET' | 'HEAD'; response: GeneratedResponse }> = Array.from({ length: ODD_CASES }, (_, i) => {
    const method = i % 3 === 2 ? 'HEAD' : 'GET';
    return { i, method, response: generateResponse(rndOdd, method === 'HEAD') };
  });
  const plain = (c: (typeof odd)[number]) => c.response.valid && !(c.method === 'HEAD' && c.response.hasBody);

  beforeAll(async () => {
    scripted = await startScriptedUpstream((target) => {
      const c = odd[Number(/^\/odd\/(\d+)/.exec(target)?.[1] ?? -1)];
      if (!c) return null;
      return { bytes: c.response.bytes, then: !plain(c) ? 'later' : c.response.closeDelimited ? 'end' : 'keep' };
    });
    oddGuard = await startTestGuard({ REINIT_GUARD_UPSTREAM: scripted.url, REINIT_GUARD_MODE: 'off' });
  });

  afterAll(async () => {
    await oddGuard?.guard.close(100);
    await scripted?.close();
  });

  it.each(odd)('#$i $method: the answer behind it is whole, in order, or never comes', async (c) => {
    const methods = [c.method, 'GET'];
    const raw = await new Promise<Buffer>((resolve) => {
      const socket = net.connect(oddGuard.guard.proxyAddress.port, '127.0.0.1');
      const chunks: Buffer[] = [];
      const done = () => {
        clearTimeout(cap);
        socket.destroy();
        resolve(Buffer.concat(chunks));
      };
      const cap = setTimeout(done, 3000);
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        const got = messagesOf(Buffer.concat(chunks), methods, false);
        if (got.length === 2 && got[1]!.complete) done();
      });
      socket.on('error', () => {});
      socket.on('close', done);
      socket.write(`${c.method} /odd/${c.i} HTTP/1.1\r\nHost: h\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n`);
    });
    const got = messagesOf(raw, methods, true);
    const label = `[${c.response.name}] -> ${JSON.stringify(got.map((m) => [m.status, m.body.slice(0, 20), m.complete]))}`;
    expect(got.length, label).toBeLessThanOrEqual(2);
    if (got.length === 2) expect(got[1], label).toEqual({ status: 200, body: 'good', complete: true });
    // Nothing of /ok's answer inside the first one.
    if (got.length >= 1) expect(got[0]!.body.includes('good'), label).toBe(false);
    if (plain(c) && !c.response.closeDelimited) expect(got.length, label).toBe(2);
  });
});
