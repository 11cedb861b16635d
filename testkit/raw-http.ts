import net from 'node:net';

/** A parsed HTTP/1.1 response, headers as received. */
export interface RawResponse {
  status: number;
  reason: string;
  headers: Array<[string, string]>;
  body: Buffer;
  /** Everything received, unparsed. */
  raw: Buffer;
}

/** Sends exact bytes to host:port and collects everything until the server closes. */
export function rawExchange(port: number, request: string | Buffer, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within ${timeoutMs}ms; got: ${Buffer.concat(chunks).toString('latin1').slice(0, 300)}`));
    }, timeoutMs);
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    socket.write(request);
  });
}

/** Parses one response (Content-Length, chunked, or close-delimited body). */
export function parseResponse(raw: Buffer, method = 'GET'): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  if (end === -1) throw new Error(`no response head in: ${raw.toString('latin1').slice(0, 200)}`);
  const [statusLine, ...lines] = raw.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(statusLine ?? '');
  if (!m) throw new Error(`bad status line: ${statusLine}`);
  const headers = lines.map((l) => {
    const i = l.indexOf(':');
    return [l.slice(0, i), l.slice(i + 1).trim()] as [string, string];
  });
  const get = (n: string) => headers.find(([k]) => k.toLowerCase() === n)?.[1];
  const status = Number(m[1]);
  let rest = raw.subarray(end + 4);
  let body: Buffer;
  if (method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200)) body = Buffer.alloc(0);
  else if (get('transfer-encoding')?.toLowerCase() === 'chunked') {
    const parts: Buffer[] = [];
    for (;;) {
      const eol = rest.indexOf('\r\n');
      const size = parseInt(rest.subarray(0, eol).toString('latin1'), 16);
      if (!size) break;
      parts.push(rest.subarray(eol + 2, eol + 2 + size));
      rest = rest.subarray(eol + 2 + size + 2);
    }
    body = Buffer.concat(parts);
  } else if (get('content-length') !== undefined) body = rest.subarray(0, Number(get('content-length')));
  else body = rest;
  return { status, reason: m[2] ?? '', headers, body, raw };
}
