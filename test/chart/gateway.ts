/**
 * Which HTTPRoute rule a Gateway must send a request to, by the precedence the Gateway API
 * specifies (gateway-api v1.6.3, apis/v1/httproute_types.go):
 *
 * - HTTPRouteSpec.hostnames: "In the event that multiple HTTPRoutes specify intersecting
 *   hostnames ..., precedence must be given to rules from the HTTPRoute with the largest number
 *   of: Characters in a matching non-wildcard hostname. Characters in a matching hostname. If
 *   ties exist across multiple Routes, the matching precedence rules for HTTPRouteMatches takes
 *   over."
 * - HTTPRouteRule.matches: "precedence must be given to the match having: "Exact" path match.
 *   "Prefix" path match with largest number of characters. Method match. Largest number of
 *   header matches. Largest number of query param matches." Then the oldest Route, then
 *   "{namespace}/{name}" alphabetically, then the first matching rule in list order.
 *
 * Only what these criteria need is modelled (no RegularExpression paths, whose precedence the
 * spec leaves to implementations; header and query matches are counted, not evaluated).
 */
export interface Route {
  metadata: { name: string; namespace: string; creationTimestamp: string };
  spec: { parentRefs?: unknown[]; hostnames?: string[]; rules: Array<{ matches: Match[] }> };
}
interface Match {
  path?: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string };
  method?: string;
  headers?: unknown[];
  queryParams?: unknown[];
}

/** The hostname of a route that matches `host`, or undefined; a route without hostnames matches all. */
function matchingHostname(route: Route, host: string): { exact: number; chars: number } | undefined {
  const names = route.spec.hostnames ?? [];
  if (names.length === 0) return { exact: 0, chars: 0 };
  let best: { exact: number; chars: number } | undefined;
  for (const h of names) {
    const wildcard = h.startsWith('*.');
    const ok = wildcard ? host.endsWith(h.slice(1)) && host.length > h.length - 1 : host === h;
    if (!ok) continue;
    const score = { exact: wildcard ? 0 : h.length, chars: h.length };
    if (!best || score.exact > best.exact || (score.exact === best.exact && score.chars > best.chars)) best = score;
  }
  return best;
}

/** Path matching as the spec defines it: PathPrefix matches whole path elements. */
function pathMatches(m: Match, path: string): boolean {
  const p = m.path ?? { type: 'PathPrefix', value: '/' };
  if (p.type === 'Exact') return path === p.value;
  if (p.type === 'PathPrefix') {
    const prefix = p.value.replace(/\/+$/, '');
    return prefix === '' || path === prefix || path.startsWith(`${prefix}/`);
  }
  throw new Error('RegularExpression precedence is implementation-specific');
}

/** The route and rule index that serve `host` + `path` (method GET, no headers or query). */
export function pick(routes: Route[], host: string, path: string): { route: string; rule: number } | undefined {
  const candidates = routes.flatMap((route) => {
    const hostname = matchingHostname(route, host);
    if (!hostname) return [];
    return route.spec.rules.flatMap((rule, ruleIndex) =>
      rule.matches
        .filter((m) => pathMatches(m, path) && (!m.method || m.method === 'GET') && !m.headers?.length && !m.queryParams?.length)
        .map((m) => ({ route, ruleIndex, hostname, m })),
    );
  });
  const key = (c: (typeof candidates)[number]) => [
    -c.hostname.exact,
    -c.hostname.chars,
    c.m.path?.type === 'Exact' ? 0 : 1,
    -(c.m.path?.type === 'PathPrefix' ? c.m.path.value.length : 0),
    c.m.method ? 0 : 1,
    -(c.m.headers?.length ?? 0),
    -(c.m.queryParams?.length ?? 0),
    Date.parse(c.route.metadata.creationTimestamp),
  ];
  candidates.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! - kb[i]!;
    const na = `${a.route.metadata.namespace}/${a.route.metadata.name}`;
    const nb = `${b.route.metadata.namespace}/${b.route.metadata.name}`;
    return na === nb ? a.ruleIndex - b.ruleIndex : na < nb ? -1 : 1;
  });
  const best = candidates[0];
  return best && { route: `${best.route.metadata.namespace}/${best.route.metadata.name}`, rule: best.ruleIndex };
}
