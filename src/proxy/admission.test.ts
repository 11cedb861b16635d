import { describe, expect, it } from 'vitest';
import { UNSUPPORTED_VERSION, rawRefusal, unparsedVersionRefusal } from './admission.js';

/** Where Node's parser stops on a bad version: the end of the version, as in its error. */
const at = (packet: string, line: string) => [Buffer.from(packet, 'latin1'), packet.indexOf(line) + line.length] as const;

describe('unparsedVersionRefusal', () => {
  it.each([
    ['GET / HTTP/3.0', 'GET / HTTP/3.0\r\nHost: h\r\n\r\n'],
    ['GET / HTTP/2.1', 'GET / HTTP/2.1\r\n\r\n'],
    ['GET / HTTP/0.8', 'GET / HTTP/0.8\r\n\r\n'],
    ['GET /b HTTP/9.9', 'GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/9.9\r\n\r\n'],
  ])('%s: a version Go parses and refuses, 505', (line, packet) => {
    expect(unparsedVersionRefusal(...at(packet, line))).toBe(UNSUPPORTED_VERSION);
  });

  it.each([
    ['GET / HTTP/1.2', 'GET / HTTP/1.2\r\n\r\n'],
    ['GET / HTTP/12.0', 'GET / HTTP/12.0\r\n\r\n'],
    ['GET / HTTP/1.1 ', 'GET / HTTP/1.1 \r\n\r\n'],
    ['GET / XTTP/3.0', 'GET / XTTP/3.0\r\n\r\n'],
  ])('%s: not a 505 (Go serves HTTP/1.2 as 1.x; the rest does not parse)', (line, packet) => {
    expect(unparsedVersionRefusal(...at(packet, line))).toBeNull();
  });

  it('without a packet: null', () => expect(unparsedVersionRefusal(undefined, 3)).toBeNull());
});

describe('rawRefusal', () => {
  it("writes Go's answer byte for byte", () => {
    expect(rawRefusal(UNSUPPORTED_VERSION)).toBe(
      'HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n505 HTTP Version Not Supported: unsupported protocol version',
    );
  });
});
