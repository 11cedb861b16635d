import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { Hono } from 'hono';
import { getRequestListener, type HttpBindings } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { forward, pathOnly, type ForwardDeps } from '../proxy/forward.js';
import { createReinitHandler, type ReinitDeps } from '../reinit/handler.js';
import { isReinitWait, REINIT_PATH } from '../reinit/wait.js';

/** Dependencies of the proxied-traffic app; `reinit` is absent in mode off. */
export interface ProxyAppDeps extends ForwardDeps {
  reinit?: Omit<ReinitDeps, keyof ForwardDeps>;
  /** True once coderd is patched (REINIT_GUARD_RETIRE_AT): behave as mode off. */
  retired?: () => boolean;
}

/**
 * The Hono application for the one route the guard inspects, `GET /reinit`: a true `wait`
 * goes to the reinit handler, anything else is forwarded. The handlers work on Node's own
 * streams (bindings `incoming` / `outgoing`) so bytes pass untouched, and tell Hono the
 * response is already sent.
 */
export function createReinitApp(deps: ForwardDeps & { reinit: Omit<ReinitDeps, keyof ForwardDeps> }) {
  const app = new Hono<{ Bindings: HttpBindings }>();
  const reinit = createReinitHandler({ ...deps, ...deps.reinit });
  app.get(REINIT_PATH, (c) => {
    const { incoming, outgoing } = c.env;
    if (isReinitWait(incoming.method, incoming.url ?? '')) reinit(incoming, outgoing);
    else forward(deps, incoming, outgoing);
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}

/**
 * The request listener of the proxy port. `GET /reinit` goes through the Hono app (in
 * modes enforce and observe, unless retired); everything else goes straight to the
 * streaming forwarder. Two reasons, both about being invisible: building a Fetch `Request`
 * validates Host and the request target (a missing Host on HTTP/1.0, a backslash in a
 * path) and answers 400 where coderd would answer, and it costs time on every request of
 * the fleet (see bench/).
 */
export function createProxyListener(deps: ProxyAppDeps): RequestListener {
  const { reinit } = deps;
  if (!reinit) return (req, res) => forward(deps, req, res);
  const viaApp = getRequestListener(createReinitApp({ ...deps, reinit }).fetch, {
    autoCleanupIncoming: false,
    overrideGlobalObjects: false,
    // HTTP/1.0 agents may omit Host; name coderd rather than refuse them.
    hostname: deps.upstream.hostPort,
  });
  const retired = deps.retired ?? (() => false);
  return (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'GET' && !retired() && pathOnly(req.url) === REINIT_PATH) void viaApp(req, res);
    else forward(deps, req, res);
  };
}
