/**
 * Reads the first Server-Sent Event out of the bytes coderd sent so far. Parsing follows
 * the HTML SSE rules (any of CRLF, LF, CR ends a line; a blank line ends an event) so odd
 * framing is recognised; the bytes themselves are never re-framed: the caller forwards the
 * original buffer verbatim. See https://html.spec.whatwg.org/multipage/server-sent-events.html
 */

/** The first event, and where its bytes end in the buffer. */
export interface SseEvent {
  /** Offset just past the blank line that ended the event. */
  end: number;
  /** The `event:` field, or "message" when absent (the spec's default). */
  type: string;
  /** The `data:` lines joined by "\n", or null when there were none. */
  data: string | null;
}

const LF = 0x0a;
const CR = 0x0d;

/** A UTF-8 byte order mark: the SSE spec strips one at the start of the stream. */
const BOM = [0xef, 0xbb, 0xbf];

/**
 * Returns the first complete event in `buf` (the start of coderd's stream), or `null` when
 * more bytes are needed. Decided from the SSE specification and the agent's reader
 * (codersdk.ServerSentEventReader, which keys on `event:` lines):
 * - an event is a block, ended by a blank line, holding an `event` or `data` field; a
 *   block of only comments (`: keepalive`), `id` or `retry` lines dispatches nothing
 *   (the spec dispatches nothing without data; coderd's ping, `event: ping` alone, is an
 *   event to the agent, so `event` counts too), and reading goes on to the next block;
 * - a leading byte order mark is skipped, as the spec says;
 * - CR, LF and CRLF all end a line, and a CR ends its line at once: if an LF follows, it
 *   belongs to the same line end. So a stream that pauses after `\r\r` is read now, not
 *   after the peek deadline.
 *
 * @example
 * readFirstEvent(Buffer.from('event: ping\n\n')) // => { end: 13, type: 'ping', data: null }
 */
export function readFirstEvent(buf: Uint8Array): SseEvent | null {
  let type = 'message';
  let data: string[] | null = null;
  let dispatchable = false;
  let start = buf[0] === BOM[0] && buf[1] === BOM[1] && buf[2] === BOM[2] ? 3 : 0;
  for (let i = start; i < buf.length; i++) {
    const b = buf[i];
    if (b !== LF && b !== CR) continue;
    const lineEnd = i;
    if (b === CR && buf[i + 1] === LF) i++;
    const line = Buffer.from(buf.buffer, buf.byteOffset + start, lineEnd - start).toString('utf8');
    start = i + 1;
    if (line === '') {
      if (dispatchable) return { end: start, type, data: data === null ? null : data.join('\n') };
      // A blank line after nothing, or after comments, id or retry: no event; start over.
      type = 'message';
      data = null;
      continue;
    }
    if (line.startsWith(':')) continue; // Comment.
    const colon = line.indexOf(':');
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') {
      type = value;
      dispatchable = true;
    } else if (name === 'data') {
      (data ??= []).push(value);
      dispatchable = true;
    }
  }
  return null;
}

/** The reinit event coderd sends: `{"workspace_id","reason","owner_id"?}`. */
export interface ReinitEvent {
  workspace_id: string;
  reason: string;
  owner_id?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Interprets an SSE event as coderd's reinit event, when it is one: a `data` event whose
 * JSON carries a workspace id. Anything else (a ping, an error event, malformed JSON)
 * yields null and the stream passes untouched.
 */
export function asReinitEvent(ev: SseEvent): ReinitEvent | null {
  if (ev.type !== 'data' || ev.data === null) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(ev.data);
  } catch {
    return null;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return null;
  const { workspace_id, reason } = parsed as Record<string, unknown>;
  if (typeof workspace_id !== 'string' || !UUID.test(workspace_id) || typeof reason !== 'string') return null;
  return parsed as ReinitEvent;
}

/** The reason coderd gives when a prebuilt workspace was claimed. */
export const PREBUILD_CLAIMED = 'prebuild_claimed';
