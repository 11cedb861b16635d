import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * One request in flight per client connection.
 *
 * Node's server parses every request a client pipelines on a connection and emits each at
 * once, while their responses are written one after the other. A proxy that forwards on
 * that event fans one connection out into as many simultaneous upstream requests as the
 * client cares to send (5,000 pipelined GETs became 5,000 connections to coderd), runs
 * pipelined unsafe requests in parallel (RFC 9112 §9.3.2 allows that only for safe
 * methods), and keeps forwarding requests whose client has already left. nginx forwards
 * one request at a time per client connection, and coderd (Go's server) reads the next
 * request only once it has answered the one before: so does the guard.
 *
 * The queue is Node's own. Node gives a request's response the connection's socket only
 * once every earlier response on it is finished (`res.socket` is null until then, and the
 * `socket` event says when). A request is forwarded when its response holds the socket:
 * on arrival when nothing is ahead of it (the common case, which costs one property
 * read), else when its turn comes. A request whose client left before its turn is never
 * forwarded: its response never gets the socket.
 *
 * Once {@link PAUSE_AFTER} requests wait, the socket is no longer read, so the parser stops
 * producing requests and the guard's memory stays flat whatever the client sends (one
 * read, at most 64 KiB, can still hold a few thousand small requests); reading resumes
 * once the last waiting request is on its way. Below that depth the socket is still read,
 * and only so does the guard see a client leave (its FIN or reset) while an answer is under
 * way: the request in flight is released at once and the waiting ones are dropped. (A
 * client pipelining deeper is noticed at the next byte written to it.)
 *
 * Upgrades and CONNECT do not take part in that queue (Node emits them at once, without a
 * response), so {@link serialiseUpgrades} holds them until the connection is idle.
 */

type UpgradeListener = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

/** What the pipeline keeps on a connection that pipelines; nothing on one that does not. */
interface Lane {
  /** Requests parsed but waiting for their turn. */
  waiting: number;
  /** Whether the pipeline stopped reading the socket. */
  paused: boolean;
  /** Whether the connection left HTTP (an upgrade or CONNECT took it): never read it again here. */
  upgraded: boolean;
}

/**
 * How many requests may wait on a connection before the pipeline stops reading it. Real
 * clients pipeline a handful at most (most never do): they are read on, and their leaving
 * seen at once.
 */
export const PAUSE_AFTER = 32;

const LANE = Symbol('pipeline lane');
/** Set on a waiting request that must not be forwarded; run instead when its turn comes. */
const INSTEAD = Symbol('pipeline instead');

type LanedSocket = Duplex & { [LANE]?: Lane; _httpMessage?: ServerResponse | null };
type MarkedRequest = IncomingMessage & { [INSTEAD]?: () => void };

const laneOf = (socket: LanedSocket): Lane => (socket[LANE] ??= { waiting: 0, paused: false, upgraded: false });

/**
 * Keeps a paused socket paused. Node's server resumes a socket on its own (when a request
 * body is read, when a finished request's rest is dumped, when its write buffer drains);
 * its own `resume` handler starts reading again, and this one, registered after it,
 * stops it again in the same tick, before any byte is read.
 */
function keepPaused(this: LanedSocket): void {
  const lane = this[LANE];
  if (lane?.paused && !lane.upgraded) this.pause();
}

function pause(socket: LanedSocket, lane: Lane): void {
  if (lane.paused) return;
  if (!socket.listeners('resume').includes(keepPaused)) socket.on('resume', keepPaused);
  lane.paused = true;
  socket.pause();
}

function resume(socket: LanedSocket, lane: Lane): void {
  if (!lane.paused) return;
  lane.paused = false;
  // After an upgrade the socket belongs to the tunnel, which decides when it is read.
  if (!lane.upgraded) socket.resume();
}

/** Whether a response can still be written on the socket. */
const usable = (socket: Duplex): boolean => !socket.destroyed && socket.writable;

/**
 * Wraps the proxy's request listener so that a client connection never has more than one
 * request in flight upstream: a pipelined request is handed to `listener` only once every
 * earlier request on its connection is answered, and never if the client left first.
 */
export function serialiseRequests(listener: RequestListener): RequestListener {
  const turn = (req: MarkedRequest, res: ServerResponse, socket: LanedSocket, lane: Lane) => {
    lane.waiting--;
    if (lane.waiting === 0) resume(socket, lane);
    // An earlier response closed the connection (Connection: close, a refusal), or the
    // client half-closed it: this request's answer could never be written.
    if (!usable(socket)) return;
    const instead = req[INSTEAD];
    if (instead) instead();
    else listener(req, res);
  };
  return (req, res) => {
    // The fast path: nothing ahead of this request on its connection.
    if (res.socket !== null) return void listener(req, res);
    const socket = req.socket as LanedSocket;
    const lane = laneOf(socket);
    if (++lane.waiting >= PAUSE_AFTER) pause(socket, lane);
    res.once('socket', () => turn(req, res, socket, lane));
  };
}

/**
 * Runs `fn` once no response holds the connection: every request parsed on it before now
 * has been answered. Not at all if the connection closes first.
 */
export function whenIdle(socket: Duplex, fn: () => void): void {
  const s = socket as LanedSocket;
  if (s.destroyed) return;
  const current = s._httpMessage;
  if (!current) return fn();
  // When a response finishes, Node hands the socket to the next one before the finished
  // one emits 'close': look again then. A response that closes unfinished closed the socket.
  current.once('close', () => whenIdle(socket, fn));
}

/**
 * Wraps the upgrade and CONNECT listener: Node emits an upgrade as soon as its head is
 * parsed, even while earlier pipelined requests on the connection are still being
 * answered. It is handled once they are all answered (its 101 or answer can then never be
 * written into the middle of another response), and dropped, never forwarded, if the
 * client leaves first.
 */
export function serialiseUpgrades(listener: UpgradeListener): UpgradeListener {
  return (req, socket, head) => {
    // The connection itself: Node 26 hands an upgrade whose body is still arriving over as
    // a stream wrapping it.
    const connection = (req.socket ?? socket) as LanedSocket;
    // No request follows an upgrade, and the pipeline must never read this connection
    // again, only its new owner.
    const lane = connection[LANE];
    if (lane) lane.upgraded = true;
    if (!connection._httpMessage) return listener(req, socket, head);
    whenIdle(connection, () => {
      if (usable(connection)) listener(req, socket, head);
      else socket.destroy();
    });
  };
}

/**
 * Makes sure a request waiting for its turn is never forwarded: `fn` answers in its place
 * when its turn comes. For a request the parser failed inside (a bad chunk in its body),
 * which can never be completed.
 */
export function answerInstead(req: IncomingMessage, fn: () => void): void {
  (req as MarkedRequest)[INSTEAD] = fn;
}
