import { Hono } from 'hono';
import type { HttpBindings } from '@hono/node-server';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { forward, type ForwardDeps } from '../proxy/forward.js';
import { createReinitHandler, type ReinitDeps } from '../reinit/handler.js';
import { isReinitWait } from '../reinit/wait.js';

/** Dependencies of the proxied-traffic app; `reinit` is absent in mode off. */
export interface ProxyAppDeps extends ForwardDeps {
  reinit?: Omit<ReinitDeps, keyof ForwardDeps>;
}

/**
 * The application for proxied traffic. Hono frames it; the handlers work on Node's own
 * request and response streams (bindings `incoming`/`outgoing`) so bodies stream with
 * backpressure and bytes pass untouched, and tell Hono the response is already sent.
 */
export function createProxyApp(deps: ProxyAppDeps) {
  const app = new Hono<{ Bindings: HttpBindings }>();
  const reinit = deps.reinit ? createReinitHandler({ ...deps, ...deps.reinit }) : null;
  app.all('*', (c) => {
    const { incoming, outgoing } = c.env;
    if (reinit && isReinitWait(incoming.method, incoming.url ?? '')) reinit(incoming, outgoing);
    else forward(deps, incoming, outgoing);
    return RESPONSE_ALREADY_SENT;
  });
  return app;
}
