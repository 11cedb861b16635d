import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { converse, readMessages, type Conversation, type Message } from '../../testkit/http-messages.js';
import { freePort } from '../../testkit/pg.js';
import type { Proc } from '../../testkit/procs.js';
import { startProgrammableUpstream, type ProgrammableUpstream } from '../../testkit/programmable-upstream.js';
import { startTestGuard, type TestGuard } from '../support/env.js';
import { startReferenceNginx } from './harness.js';

/**
 * The response side of the differential: the same raw answers of coderd's go through the
 * guard and through nginx (the reference proxy), each in front of its own upstream, to a
 * keep-alive client that sends the case's request and then `GET /ok` on the same
 * connection. The classes: 1xx interim responses (an unsolicited 100, 103 with odd or
 * several Link lines, 1xx to an HTTP/1.0 client, malformed 1xx) and bodiless statuses
 * carrying Content-Length (204, 304, HEAD).
 *
 * For every case the guard's client sees exactly the statuses the case pins; every 1xx the
 * guard relays is coderd's, line for line; no 1xx reaches an HTTP/1.0 client; a 502 is in
 * coderd's shape; the next request on the connection is answered. And the guard's outcome
 * equals nginx's unless the case names the difference. nginx 1.22 (Debian's) takes a 1xx
 * from upstream for the final response and passes the real one on as its body, ended by
 * coderd's close: the upstream closes shortly after a 1xx answer (as coderd would not),
 * so that nginx's client sees a usable outcome to compare with.
 */
interface ResponseCase {
  name: string;
  /** coderd's answer, raw. */
  answer: string;
  method?: 'GET' | 'HEAD';
  /** The client's HTTP version (an HTTP/1.0 client asks for keep-alive). */
  version?: '1.1' | '1.0';
  /** The statuses the guard's client must see, 1xx included, for the case and `GET /ok`. */
  guard: number[];
  /** Why the guard and nginx differ, when they do. */
  differs?: string;
}

const FINAL = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal';
const NGINX_1XX = "nginx 1.22 takes a 1xx for the final response and passes the real one on as that one's body, ended by coderd's close";

const CASES: ResponseCase[] = [
  // 1xx
  { name: 'unsolicited 100 Continue', answer: `HTTP/1.1 100 Continue\r\n\r\n${FINAL}`, guard: [200, 200], differs: `the guard drops a 100 (hop-by-hop: Node's server answers a client's Expect itself); ${NGINX_1XX}` },
  // (To nginx's client these look right: the 1xx, then what seems the final response.)
  { name: '103 with a Link Node would refuse', answer: `HTTP/1.1 103 Early Hints\r\nLink: preload-me\r\n\r\n${FINAL}`, guard: [103, 200, 200] },
  { name: '103 with two Link lines', answer: `HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n\r\n${FINAL}`, guard: [103, 200, 200] },
  { name: 'two 103s', answer: `HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n${FINAL}`, guard: [103, 103, 200, 200] },
  { name: '103 with obs-text and an empty value', answer: `HTTP/1.1 103 Early Hints\r\nLink: </caf\xe9.css>; rel=preload\r\nX-Empty:\r\n\r\n${FINAL}`, guard: [103, 200, 200] },
  { name: '102 Processing', answer: `HTTP/1.1 102 Processing\r\n\r\n${FINAL}`, guard: [102, 200, 200] },
  { name: 'an unassigned 1xx (199)', answer: `HTTP/1.1 199 Whatever\r\nX-A: 1\r\n\r\n${FINAL}`, guard: [199, 200, 200] },
  { name: '103 then a 304 with Content-Length', answer: 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n', guard: [103, 304, 200] },
  { name: '103 to an HTTP/1.0 client', version: '1.0', answer: `HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n${FINAL}`, guard: [200, 200], differs: `RFC 9110 §15.2: no 1xx to an HTTP/1.0 client, so the guard drops it; ${NGINX_1XX}` },
  { name: '100 to an HTTP/1.0 client', version: '1.0', answer: `HTTP/1.1 100 Continue\r\n\r\n${FINAL}`, guard: [200, 200], differs: `RFC 9110 §15.2: no 1xx to an HTTP/1.0 client; ${NGINX_1XX}` },
  // Malformed 1xx
  { name: 'malformed 1xx: a header line without a colon', answer: `HTTP/1.1 103 Early Hints\r\nLink </a.css>\r\n\r\n${FINAL}`, guard: [502, 200] },
  { name: 'malformed 1xx: a control byte in a value', answer: `HTTP/1.1 103 Early Hints\r\nX-Del: a\x7fb\r\n\r\n${FINAL}`, guard: [502, 200], differs: `the guard's parser refuses a control byte in a value (502), as Node's does; ${NGINX_1XX}` },
  { name: 'malformed 1xx: bytes after it that are no response', answer: `HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nabc${FINAL}`, guard: [103, 502, 200], differs: `a 1xx has no body: the guard relays the 103 and answers 502 for what follows; ${NGINX_1XX}, and never answers the next request` },
  { name: 'malformed 1xx: an HTTP/1.0 status line', answer: `HTTP/1.0 103 Early Hints\r\nLink: </a.css>\r\n\r\n${FINAL}`, guard: [103, 502, 200], differs: `HTTP/1.0 has no 1xx and ends coderd's connection after a response: the guard's parser refuses what follows (502); ${NGINX_1XX}` },
  // Bodiless statuses with Content-Length
  { name: '304 with Content-Length', answer: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n', guard: [304, 200] },
  { name: '204 with Content-Length', answer: 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n', guard: [204, 200] },
  { name: '204 with Transfer-Encoding: chunked', answer: 'HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n', guard: [204, 200] },
  { name: '304 with Content-Length to an HTTP/1.0 client', version: '1.0', answer: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n', guard: [304, 200] },
  { name: 'HEAD with Content-Length', method: 'HEAD', answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n', guard: [200, 200] },
];

const OK = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngood';
/** Cases whose answer holds a 1xx or is malformed: nginx may read past it until the connection ends. */
const odd = (c: ResponseCase) => /^HTTP\/1\.[01] 1/.test(c.answer);

/** The same upstream for both proxies: each case's answer, then the connection stays open (or, after an odd answer, closes shortly). */
const upstreamFor = () =>
  startProgrammableUpstream((req, socket) => {
    const i = /^\/case\/(\d+)$/.exec(req.target)?.[1];
    const c = i === undefined ? undefined : CASES[Number(i)];
    socket.write(c ? c.answer : OK, 'latin1');
    if (c && odd(c)) setTimeout(() => socket.destroy(), 100).unref();
  });

const requestsOf = (c: ResponseCase, i: number) => {
  const v = c.version ?? '1.1';
  const keep = v === '1.0' ? 'Connection: keep-alive\r\n' : '';
  return [`${c.method ?? 'GET'} /case/${i} HTTP/${v}\r\nHost: coder.example.com\r\n${keep}\r\n`, `GET /ok HTTP/${v}\r\nHost: coder.example.com\r\n\r\n`];
};

let guardUpstream: ProgrammableUpstream;
let nginxUpstream: ProgrammableUpstream;
let guard: TestGuard;
let nginx: { proc: Proc; port: number };
const viaGuard: Conversation[] = [];
const viaNginx: Conversation[] = [];

beforeAll(async () => {
  [guardUpstream, nginxUpstream] = await Promise.all([upstreamFor(), upstreamFor()]);
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: guardUpstream.url,
    REINIT_GUARD_PG_URL: `postgres://guard:pw@127.0.0.1:${await freePort()}/coder`,
  });
  nginx = await startReferenceNginx(nginxUpstream.port);
  // Every case on its own connections, all at once: nginx waits out the odd ones.
  await Promise.all(
    CASES.map(async (c, i) => {
      [viaGuard[i], viaNginx[i]] = await Promise.all([converse(guard.guard.proxyAddress.port, requestsOf(c, i), 3000), converse(nginx.port, requestsOf(c, i), 3000)]);
    }),
  );
}, 60_000);

afterAll(async () => {
  await nginx?.proc.stop();
  await guard?.guard.close(100);
  await guardUpstream?.close();
  await nginxUpstream?.close();
});

/** What is compared across proxies: the statuses, and the bodies of final answers but 502s (nginx writes its own). */
const comparable = (c: Conversation) => c.messages.map((m) => (m.interim || m.status === 502 ? m.status : `${m.status} ${m.body.toString('latin1')}`));

/**
 * A 1xx as a client reads it: status, reason and header lines in order, values as parsed
 * (optional whitespace around a value is not part of it, and the guard writes `name: value`
 * as Node does for every head). The guard's own protocol version is HTTP/1.1.
 */
const interim = (m: Message) => ({ status: m.status, reason: m.reason, headers: m.headers });

/** coderd's 1xx responses in an answer, as sent. */
const coderdInterims = (answer: string) =>
  readMessages(Buffer.from(answer, 'latin1'), [])
    .filter((m) => m.interim)
    .map(interim);

describe.each(CASES.map((c, i) => ({ ...c, i })))('$name', (c) => {
  it(`answers ${JSON.stringify(c.guard)}, and the next request on the connection works`, () => {
    const got = viaGuard[c.i]!;
    expect(got.messages.map((m) => m.status)).toEqual(c.guard);
    const last = got.messages.at(-1)!;
    expect(last.body.toString()).toBe('good');
    for (const m of got.messages) if (m.status === 502) expect(JSON.parse(m.body.toString())).toMatchObject({ message: 'Failed to reach coderd.' });
  });

  it("relays coderd's 1xx as sent (every line, in order), never a 100, never to an HTTP/1.0 client", () => {
    const relayed = viaGuard[c.i]!.messages.filter((m) => m.interim).map(interim);
    if (c.version === '1.0') expect(relayed).toEqual([]);
    else expect(relayed).toEqual(coderdInterims(c.answer).filter((m) => m.status !== 100).slice(0, relayed.length));
  });

  it(c.differs ? `differs from nginx, as intended: ${c.differs}` : 'behaves as nginx does', () => {
    if (c.differs) expect(comparable(viaGuard[c.i]!)).not.toEqual(comparable(viaNginx[c.i]!));
    else expect(comparable(viaGuard[c.i]!)).toEqual(comparable(viaNginx[c.i]!));
  });
});
