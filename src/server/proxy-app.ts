import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { Hono } from 'hono';
import type { HttpBindings } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { createTrafficObserver } from '../observability/traffic.js';
import { refusal, writeRefusal } from '../proxy/admission.js';
import { failRequest, forward, type ForwardDeps } from '../proxy/forward.js';
import { hostFromTarget } from '../proxy/headers.js';
import { logPath } from '../proxy/target.js';
import { createReinitHandler, type ReinitDeps } from '../reinit/handler.js';
import { isReinitRoute, isReinitWait, REINIT_PATH } from '../reinit/wait.js';

/** Dependencies of the proxied-traffic app; `reinit` is absent in mode off. */
export interface ProxyAppDeps extends ForwardDeps {
  reinit?: Omit<ReinitDeps, keyof ForwardDeps>;
  /** True once coderd is patched (REINIT_GUARD_RETIRE_AT): behave as mode off. */
  retired?: () => boolean;
  /** One JSON access-log line per request (REINIT_GUARD_ACCESS_LOG). */
  accessLog?: boolean;
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
  app.onError((err, c) => {
    failRequest(deps, 'reinit', c.env.incoming, c.env.outgoing, err);
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}

/**
 * The request listener of the proxy port. Requests coderd would route to its reinit
 * handler go through the Hono app (in modes enforce and observe, unless retired), however
 * their target is spelled; everything else goes straight to the streaming forwarder. The
 * route is decided here, on the target as coderd normalises it, and the app is handed that
 * route, not the raw target: building a Fetch `Request` from the raw target validates Host
 * and the target and answers 400 where coderd would answer (a missing Host on HTTP/1.0, a
 * backslash, an absolute form), and it would cost time on every request of the fleet.
 */
export function createProxyListener(deps: ProxyAppDeps): RequestListener {
  const { reinit } = deps;
  const app = reinit ? createReinitApp({ ...deps, reinit }) : null;
  const retired = deps.retired ?? (() => false);
  // The app only routes it (method and path; the handlers work on Node's own streams and
  // never read it): one Request for every /reinit, not one each. Building a Fetch Request
  // costs about 20 us and 2 KB, which a 10,000-agent storm paid 10,000 times at once.
  const reinitRequest = new Request(`http://guard${REINIT_PATH}`);
  const route = (req: IncomingMessage, res: ServerResponse) => {
    const refused = refusal(req);
    if (refused) {
      deps.metrics.refused.inc({ reason: refused.reason });
      deps.log.info('request refused', { reason: refused.reason, method: req.method ?? '', path: logPath(req.url) });
      writeRefusal(res, refused);
      return;
    }
    // An absolute-form target names the Host coderd sees (hostFromTarget): every path
    // from here (forward, /reinit) builds coderd's headers from the raw ones.
    req.rawHeaders = hostFromTarget(req.rawHeaders, req.url ?? '');
    if (req.url === '*' && req.method === 'OPTIONS') {
      // Go's server answers `OPTIONS *` itself, before any handler: so does the guard.
      res.writeHead(200, { 'Content-Length': '0' }).end();
    } else if (app && !retired() && isReinitRoute(req.method, req.url ?? '')) {
      void app.fetch(reinitRequest, { incoming: req, outgoing: res });
    } else forward(deps, req, res);
  };
  const onResponseError = (err: Error) => deps.log.debug('client response error', { code: (err as NodeJS.ErrnoException).code ?? null });
  const observe = createTrafficObserver({ metrics: deps.metrics, log: deps.log, accessLog: deps.accessLog === true });
  return (req, res) => {
    // A write to a client that already left must never become an unhandled 'error'.
    res.on('error', onResponseError);
    observe(req, res);
    try {
      route(req, res);
    } catch (err) {
      failRequest(deps, 'request', req, res, err);
    }
  };
}
