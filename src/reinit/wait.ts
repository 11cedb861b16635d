import { goQueryGet, rawQuery, routePath } from '../proxy/target.js';

/** The path coderd serves the agent's reinit stream on. */
export const REINIT_PATH = '/api/v2/workspaceagents/me/reinit';

const GO_TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);

/**
 * Go's `strconv.ParseBool` truth, as coderd applies it to `wait`: anything it cannot
 * parse counts as false there, and so here.
 */
export const isGoTrue = (value: string | null): boolean => value !== null && GO_TRUE.has(value);

/**
 * Whether coderd would route a request to its reinit handler: a GET (chi's `r.Get` serves
 * no other method) whose path, as coderd normalises it, is the reinit path, whatever the
 * target's form (absolute, doubled slashes, percent-encoded letters).
 */
export const isReinitRoute = (method: string | undefined, target: string): boolean => method === 'GET' && routePath(target) === REINIT_PATH;

/**
 * Whether a request is a `/reinit` call the guard must inspect: coderd's reinit route with
 * `wait` true by Go's rules (`r.URL.Query().Get("wait")` then `strconv.ParseBool`).
 */
export function isReinitWait(method: string | undefined, target: string): boolean {
  return isReinitRoute(method, target) && isGoTrue(goQueryGet(rawQuery(target), 'wait'));
}
