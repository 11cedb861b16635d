import type { ClientRequest, IncomingMessage } from 'node:http';
import type { Duplex, Writable } from 'node:stream';
import type { Socket } from 'node:net';
import { DescriptorWait, outOfDescriptors } from './descriptors.js';
import { classifyUpstreamError, rawCoderError, upstreamFailure } from './errors.js';
import type { ForwardDeps } from './forward.js';
import { clientResponseHeaders, toPairs } from './headers.js';
import { rawHead } from './response-head.js';
import { logPath, logUpgrade } from './target.js';
import { openUpstream, requestFraming } from './upstream.js';

/** Joins two sockets both ways; either side ending, failing or closing ends the other. */
function splice(a: Duplex, b: Duplex, onClose: () => void): void {
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    a.destroy();
    b.destroy();
    onClose();
  };
  a.on('error', close).on('close', close);
  b.on('error', close).on('close', close);
  a.pipe(b);
  b.pipe(a);
}

const noDelay = (s: Duplex) => {
  (s as Socket).setNoDelay?.(true);
  (s as Socket).setTimeout?.(0);
};

/**
 * Handles upgrades of any kind (WebSocket, `Upgrade: DERP`, anything else) and CONNECT:
 * forwards the request, and on coderd's 101 (or 2xx to CONNECT) writes coderd's head to
 * the client verbatim, replays the bytes either side sent early, and splices the raw
 * sockets. Any other answer is relayed and the connection closed, never left hanging.
 */
export function createTunnelHandler(deps: ForwardDeps) {
  const { metrics, log } = deps;
  // Upgraded sockets leave the HTTP server's bookkeeping: track them to close on shutdown.
  const open = new Set<Duplex>();
  // Spliced upstream sockets: they left the agent's bookkeeping with the 101.
  let spliced = 0;
  const handler = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    const isConnect = req.method === 'CONNECT';
    const upgrade = isConnect ? undefined : (req.headers.upgrade ?? '');
    noDelay(socket);
    const framing = requestFraming(req);
    // Opened below, once its listeners exist; again after a wait for a descriptor.
    let upReq: ClientRequest;
    let answered = false;
    // A bodiless upgrade the guard had no descriptor for (descriptors.ts) waits and goes again.
    let descriptorWait: DescriptorWait | null = null;
    let retryTimer: NodeJS.Timeout | undefined;
    // Bytes the client sent after its head (and after its body, if it announced one):
    // tunnel data, replayed once coderd accepts the upgrade.
    let early = head;
    // Stops reading the request body off the socket (sendBody), once coderd switched; the
    // rest of a body Node parsed itself goes straight to coderd's socket (sendParsedBody).
    let stopBody: ((upSocket: Duplex) => void) | null = null;
    socket.on('error', () => upReq.destroy());
    socket.once('close', () => {
      clearTimeout(retryTimer);
      if (!answered) upReq.destroy();
    });

    const onUpgraded = (upRes: IncomingMessage, upSocket: Duplex, upHead: Buffer) => {
      answered = true;
      noDelay(upSocket);
      // coderd may switch before the whole body arrived: the rest of it, and the tunnel
      // data after it, are the client's bytes in order, and go on through the splice as
      // they are (the body so far already went up through the request, on the same socket).
      stopBody?.(upSocket);
      // The 101 head is end to end here (it carries Upgrade, Sec-WebSocket-Accept,
      // Sec-WebSocket-Protocol/Extensions): pass it exactly as coderd sent it. Header
      // strings are latin1, one char per byte.
      socket.write(rawHead(upRes.statusCode ?? 101, upRes.statusMessage ?? '', toPairs(upRes.rawHeaders)), 'latin1');
      if (upHead.length) socket.write(upHead);
      if (early.length) upSocket.write(early);
      metrics.openStreams.inc({ kind: 'tunnel' });
      spliced++;
      splice(socket, upSocket, () => {
        spliced--;
        metrics.openStreams.dec({ kind: 'tunnel' });
      });
    };
    const onResponse = (upRes: IncomingMessage) => {
      answered = true;
      // Not upgraded: relay the answer, delimited by closing the connection.
      const headers = clientResponseHeaders(upRes.rawHeaders);
      headers.push(['Connection', 'close']);
      socket.write(rawHead(upRes.statusCode ?? 502, upRes.statusMessage ?? '', headers), 'latin1');
      upRes.pipe(socket);
      upRes.once('error', () => socket.destroy());
    };

    const onError = (err: Error) => {
      if (answered) return socket.destroy();
      if (outOfDescriptors(err) && waitForDescriptor()) return;
      answered = true;
      const kind = classifyUpstreamError(err);
      metrics.upstreamErrors.inc({ kind });
      log.warn('upstream upgrade failed', { kind, code: (err as { code?: string }).code ?? null, upgrade: isConnect ? 'CONNECT' : logUpgrade(upgrade), path: logPath(req.url) });
      const { status, body } = upstreamFailure(kind, err);
      socket.end(rawCoderError(status, status === 504 ? 'Gateway Timeout' : 'Bad Gateway', body));
    };

    /** Starts the request to coderd, with this tunnel's listeners. */
    const startUpstream = (): ClientRequest => {
      const r = openUpstream(deps.upstream, req, framing, { upgrade, connectTarget: isConnect ? req.url : undefined });
      r.once(isConnect ? 'connect' : 'upgrade', onUpgraded);
      r.once('response', onResponse);
      r.once('error', onError);
      return r;
    };
    upReq = startUpstream();

    /**
     * No descriptor for coderd's connection: nothing was sent. An upgrade without a body (every
     * WebSocket and DERP client's) is opened again after a wait, as a plain request is
     * (forward.ts); one whose body is under way fails as before.
     */
    function waitForDescriptor(): boolean {
      if (framing.kind === 'length' || socket.destroyed) return false;
      descriptorWait ??= new DescriptorWait(deps.upstream.connectTimeoutMs);
      const ms = descriptorWait.next();
      if (ms === null) return false;
      metrics.upstreamRetries.inc({ reason: 'no_descriptor' });
      if (descriptorWait.first) log.debug('no file descriptor for coderd\'s connection: waiting', { upgrade: isConnect ? 'CONNECT' : logUpgrade(upgrade), path: logPath(req.url) });
      retryTimer = setTimeout(() => {
        if (socket.destroyed) return;
        upReq = startUpstream();
        upReq.end();
      }, ms);
      return true;
    }

    if (framing.kind !== 'length') upReq.end();
    else if (req.readableLength > 0 || !req.complete) sendParsedBody();
    else sendBody(Number(framing.length));

    /**
     * Node 26 parses an upgrade request's Content-Length body itself and hands it over on
     * `req` (Node 20 and 24 stop at the head): the socket then carries only what follows the
     * body, so `head` is tunnel data already. Once coderd switched, the rest of the body goes
     * to its socket as it is, before any tunnel data (the parser emits the body first).
     */
    function sendParsedBody(): void {
      early = head;
      let target: Writable = upReq;
      const onData = (chunk: Buffer) => {
        if (!target.write(chunk)) {
          req.pause();
          target.once('drain', () => req.resume());
        }
      };
      req.on('data', onData);
      req.once('end', () => {
        if (target === upReq) upReq.end();
      });
      stopBody = (upSocket) => {
        stopBody = null;
        target = upSocket;
      };
    }

    /**
     * An upgrade request with a Content-Length body (curl's h2c upgrade on a POST): the body
     * goes up first, as in any request, and only what follows it is tunnel data. Node's
     * parser stops at an upgrade request's head, so the body is read off the socket here.
     */
    function sendBody(length: number): void {
      let left = length;
      const take = (chunk: Buffer) => {
        const body = chunk.subarray(0, left);
        left -= body.length;
        early = chunk.subarray(body.length);
        return body.length ? upReq.write(body) : true;
      };
      take(head);
      if (left === 0) return void upReq.end();
      const onDrain = () => socket.resume();
      const onData = (chunk: Buffer) => {
        if (!take(chunk)) {
          socket.pause();
          upReq.once('drain', onDrain);
        }
        if (left > 0) return;
        stop();
        // Nothing more is read until coderd answers: what follows is tunnel data.
        socket.pause();
        upReq.end();
      };
      const stop = () => {
        stopBody = null;
        socket.off('data', onData);
        upReq.off('drain', onDrain);
      };
      stopBody = stop;
      socket.on('data', onData);
    }
  };
  return Object.assign(handler, {
    /** Closes every tunnel (both sides end: splice tears down the peer). */
    closeAll: () => {
      for (const s of open) s.destroy();
    },
    /** Upstream connections of spliced tunnels. */
    splicedUpstream: () => spliced,
  });
}
