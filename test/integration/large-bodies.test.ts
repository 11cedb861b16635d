import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deterministicStream, sha256Stream } from '../../testkit/bytes.js';
import { startEchoUpstream, type EchoUpstream, type Received } from '../../testkit/echo-upstream.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

const MiB = 1024 * 1024;
let upstream: EchoUpstream;
let guard: GuardProcess;

beforeAll(async () => {
  upstream = await startEchoUpstream();
  guard = await startGuardProcess({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
});

afterAll(async () => {
  expect(await guard?.stop()).toBe(0);
  await upstream?.close();
});

describe('large bodies stream through with bounded memory', () => {
  it('a 100 MiB upload arrives intact and the guard never holds it', async () => {
    guard.resetPeak();
    const before = guard.memory().rss;
    const expected = await sha256Stream(deterministicStream(100 * MiB));
    const received = await new Promise<Received>((resolve, reject) => {
      const req = http.request(`${guard.url}/api/v2/files`, { method: 'POST', headers: { 'Content-Type': 'application/x-tar', 'Content-Length': String(100 * MiB) } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(JSON.parse(body) as Received));
      });
      req.on('error', reject);
      deterministicStream(100 * MiB).pipe(req);
    });
    expect(received).toMatchObject({ bodyBytes: 100 * MiB, bodySha256: expected.sha256 });
    // Buffering the upload would cost at least its size; streaming costs a few buffers and
    // the heap's own growth (under 48 MiB on Node 20, up to 60 MiB on Node 26, whose V8
    // collects later): well under the 100 MiB it would take to hold the body.
    expect(guard.memory().peak - before).toBeLessThan(75 * MiB);
  });

  it('a 64 MiB download arrives intact, Content-Length kept, memory bounded', async () => {
    guard.resetPeak();
    const before = guard.memory().rss;
    const expected = await sha256Stream(deterministicStream(64 * MiB));
    const got = await new Promise<{ sha256: string; bytes: number; length: string | undefined }>((resolve, reject) => {
      http.get(`${guard.url}/download?bytes=${64 * MiB}`, (res) => {
        sha256Stream(res).then((r) => resolve({ ...r, length: res.headers['content-length'] }), reject);
      }).on('error', reject);
    });
    expect(got).toEqual({ ...expected, length: String(64 * MiB) });
    expect(guard.memory().peak - before).toBeLessThan(48 * MiB);
  });
});
