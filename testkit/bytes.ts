import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

const BLOCK = (() => {
  // 64 KiB of fixed pseudo-random bytes: incompressible, identical on both ends.
  const out = Buffer.alloc(64 * 1024);
  let seed = createHash('sha256').update('coder-reinit-guard').digest();
  for (let off = 0; off < out.length; off += seed.length) {
    seed.copy(out, off);
    seed = createHash('sha256').update(seed).digest();
  }
  return out;
})();

/** A stream of `n` deterministic bytes, produced lazily (never held in memory). */
export function deterministicStream(n: number): Readable {
  let left = n;
  return new Readable({
    read() {
      if (left <= 0) return void this.push(null);
      const len = Math.min(left, BLOCK.length);
      left -= len;
      this.push(len === BLOCK.length ? BLOCK : BLOCK.subarray(0, len));
    },
  });
}

/** SHA-256 hex of a stream's bytes, and how many there were. */
export async function sha256Stream(stream: AsyncIterable<Buffer | Uint8Array>): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const c of stream) {
    h.update(c);
    bytes += c.length;
  }
  return { sha256: h.digest('hex'), bytes };
}
