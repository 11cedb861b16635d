import type { IncomingMessage } from 'node:http';
import { readFirstEvent, type SseEvent } from './sse.js';

/** Why a peek stopped. Anything but `event` means the stream passes unchanged. */
export type PeekEnd = 'event' | 'timeout' | 'too_large' | 'ended' | 'error';

/** What a peek read: the exact bytes so far, and the first event if it completed. */
export interface Peeked {
  bytes: Buffer;
  event: SseEvent | null;
  end: PeekEnd;
}

/**
 * Reads coderd's SSE body until its first event is complete, then pauses the stream.
 * coderd sends its headers together with its first write, so when this starts the first
 * event is normally already here. Bounded in bytes and time: past either bound the caller
 * fails open with the bytes read so far.
 */
export function peekFirstEvent(upRes: IncomingMessage, maxBytes: number, timeoutMs: number): Promise<Peeked> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (end: PeekEnd, event: SseEvent | null = null) => {
      clearTimeout(timer);
      upRes.off('data', onData);
      upRes.off('end', onEnd);
      upRes.off('close', onClose);
      upRes.pause();
      resolve({ bytes: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size), event, end });
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      // Re-scan the whole (small) buffer: events split across tiny writes still parse.
      const event = readFirstEvent(chunks.length === 1 ? chunk : Buffer.concat(chunks, size));
      if (event) finish('event', event);
      else if (size > maxBytes) finish('too_large');
    };
    const onEnd = () => finish('ended');
    const onClose = () => finish(upRes.complete ? 'ended' : 'error');
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    upRes.on('data', onData);
    upRes.once('end', onEnd);
    upRes.once('close', onClose);
  });
}
