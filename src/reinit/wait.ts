/** The path coderd serves the agent's reinit stream on. */
export const REINIT_PATH = '/api/v2/workspaceagents/me/reinit';

const GO_TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);

/**
 * Go's `strconv.ParseBool` truth, as coderd applies it to `wait`: anything it cannot
 * parse counts as false there, and so here.
 */
export const isGoTrue = (value: string | null): boolean => value !== null && GO_TRUE.has(value);

/**
 * Whether a request target is a `/reinit` call the guard must inspect: the exact path
 * with `wait` true by Go's rules. Go's `Query().Get` reads the first value, as
 * `URLSearchParams.get` does.
 */
export function isReinitWait(method: string | undefined, target: string): boolean {
  if (method !== 'GET') return false;
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  if (path !== REINIT_PATH || q === -1) return false;
  return isGoTrue(new URLSearchParams(target.slice(q + 1)).get('wait'));
}
