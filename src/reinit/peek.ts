import { readFirstEvent, type SseEvent } from './sse.js';
import type { UpstreamStream } from './upstream-stream.js';

/** Why a peek stopped. Anything but `event` means the stream passes unchanged. */
export type PeekEnd = 'event' | 'timeout' | 'too_large' | 'ended' | 'error';

/** What a peek found: the first event if it completed, and why the peek stopped. */
export interface Peeked {
  event: SseEvent | null;
  end: PeekEnd;
}

/**
 * Reads coderd's SSE body until its first event is complete. coderd sends its headers
 * together with its first write, so when this starts the first event is normally already
 * here. Bounded in bytes and time: past either bound, or once coderd ended or broke the
 * stream, the caller fails open with the bytes read so far (they stay in `stream`).
 */
export async function peekFirstEvent(stream: UpstreamStream, maxBytes: number, timeoutMs: number): Promise<Peeked> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const bytes = stream.bytes;
    const event = readFirstEvent(bytes);
    if (event) return { event, end: 'event' };
    if (bytes.length > maxBytes) return { event: null, end: 'too_large' };
    if (stream.state !== 'open') return { event: null, end: stream.state === 'ended' ? 'ended' : 'error' };
    const left = deadline - performance.now();
    if (left <= 0) return { event: null, end: 'timeout' };
    await stream.changed(left);
  }
}
