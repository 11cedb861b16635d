import net from 'node:net';

/** One response read off a client connection, 1xx included. */
export interface Message {
  status: number;
  reason: string;
  /** Header lines as received, in order. */
  headers: Array<[string, string]>;
  /** The head as received, status line first, without the final CRLF CRLF. */
  head: string;
  body: Buffer;
  /** A 1xx other than 101: an interim response, the request's final one still to come. */
  interim: boolean;
}

/**
 * Reads the complete responses in `raw`, one after the other, for requests with the given
 * methods in order (a HEAD response has no body): 1xx interim responses, then each final
 * one framed as RFC 9112 §6.3 says (1xx, 204, 304 and HEAD end at the head; then chunked,
 * Content-Length, or the connection's end when `closed`). Stops at the first incomplete or
 * unreadable message.
 */
export function readMessages(raw: Buffer, methods: readonly string[], closed = false): Message[] {
  const out: Message[] = [];
  let at = 0;
  let answered = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end === -1) break;
    const head = raw.subarray(at, end).toString('latin1');
    const [statusLine = '', ...lines] = head.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(statusLine);
    if (!m) break;
    const status = Number(m[1]);
    const headers = lines.map((l) => {
      const i = l.indexOf(':');
      return [l.slice(0, i), l.slice(i + 1).trim()] as [string, string];
    });
    const get = (n: string) => headers.find(([k]) => k.toLowerCase() === n)?.[1];
    const interim = status >= 100 && status < 200 && status !== 101;
    const bodiless = interim || status === 101 || status === 204 || status === 304 || methods[answered] === 'HEAD';
    let next = end + 4;
    let body: Buffer = Buffer.alloc(0);
    if (!bodiless) {
      if (get('transfer-encoding')?.toLowerCase() === 'chunked') {
        const parts: Buffer[] = [];
        let p = next;
        let done = false;
        for (;;) {
          const eol = raw.indexOf('\r\n', p);
          if (eol === -1) break;
          const size = parseInt(raw.subarray(p, eol).toString('latin1'), 16);
          if (Number.isNaN(size)) break;
          if (size === 0) {
            const trailerEnd = raw.indexOf('\r\n\r\n', eol - 2 < p ? p : eol - 2);
            if (trailerEnd !== -1) {
              next = trailerEnd + 4;
              done = true;
            }
            break;
          }
          if (raw.length < eol + 2 + size + 2) break;
          parts.push(raw.subarray(eol + 2, eol + 2 + size));
          p = eol + 2 + size + 2;
        }
        if (!done) break;
        body = Buffer.concat(parts);
      } else if (get('content-length') !== undefined) {
        const n = Number(get('content-length'));
        if (raw.length < next + n) break;
        body = raw.subarray(next, next + n);
        next += n;
      } else {
        if (!closed) break;
        body = raw.subarray(next);
        next = raw.length;
      }
    }
    out.push({ status, reason: m[2] ?? '', headers, head, body, interim });
    if (!interim) answered++;
    at = next;
  }
  return out;
}

/** What one keep-alive client connection saw. */
export interface Conversation {
  /** Every complete response, 1xx included, in order. */
  messages: Message[];
  /** Everything received. */
  raw: Buffer;
  /** Whether the guard closed the connection. */
  closed: boolean;
}

/**
 * Sends `requests` on one connection, each once the previous one's final response is
 * complete (a keep-alive client, not a pipelining one), and returns what came back. Ends
 * when every request was answered, when the server closes, or after `timeoutMs`.
 */
export function converse(port: number, requests: readonly string[], timeoutMs = 5000): Promise<Conversation> {
  const methods = requests.map((r) => r.slice(0, r.indexOf(' ')));
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let sent = 0;
    let settled = false;
    const finals = (closed: boolean) => readMessages(Buffer.concat(chunks), methods, closed);
    const settle = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = Buffer.concat(chunks);
      resolve({ messages: readMessages(raw, methods, closed), raw, closed });
    };
    const timer = setTimeout(() => settle(false), timeoutMs);
    const sendNext = () => {
      const answered = finals(false).filter((m) => !m.interim).length;
      if (answered === requests.length) return settle(false);
      if (answered === sent) socket.write(requests[sent++]!, 'latin1');
    };
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      sendNext();
    });
    socket.on('error', () => {});
    socket.on('close', () => settle(true));
    socket.on('connect', sendNext);
  });
}
