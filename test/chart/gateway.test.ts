import { describe, expect, it } from 'vitest';
import { pick, type Route } from './gateway.js';

/** The Gateway API precedence model the gateway topology's argument rests on (gateway.ts). */
const route = (name: string, created: string, hostnames: string[] | undefined, ...paths: Array<[type: 'Exact' | 'PathPrefix', value: string]>): Route => ({
  metadata: { name, namespace: 'coder', creationTimestamp: created },
  spec: { hostnames, rules: paths.map(([type, value]) => ({ matches: [{ path: { type, value } }] })) },
});

const REINIT = '/api/v2/workspaceagents/me/reinit';
const coder = route('coder', '2026-01-01T00:00:00Z', ['coder.example.com', '*.coder.example.com'], ['PathPrefix', '/']);
const guard = route('coder-reinit-guard', '2026-06-01T00:00:00Z', ['coder.example.com'], ['Exact', REINIT]);

describe('Gateway API route precedence', () => {
  it("an Exact match on the same host beats coder's PathPrefix /, though the route is newer", () => {
    expect(pick([coder, guard], 'coder.example.com', REINIT)).toEqual({ route: 'coder/coder-reinit-guard', rule: 0 });
  });

  it('everything else, and other hosts, stay on coder', () => {
    for (const p of [`${REINIT}/`, `${REINIT}x`, '/api/v2/workspaceagents/me/rpc', '/']) expect(pick([coder, guard], 'coder.example.com', p)).toEqual({ route: 'coder/coder', rule: 0 });
    expect(pick([coder, guard], 'app--ws--user.coder.example.com', REINIT)).toEqual({ route: 'coder/coder', rule: 0 });
  });

  it('without hostnames the route would lose to coder\'s on the hostname criteria: the chart requires them', () => {
    const bare = route('coder-reinit-guard', '2026-06-01T00:00:00Z', undefined, ['Exact', REINIT]);
    expect(pick([coder, bare], 'coder.example.com', REINIT)).toEqual({ route: 'coder/coder', rule: 0 });
  });

  it('PathPrefix matches whole path elements; the longest prefix wins; the oldest route breaks ties', () => {
    const a = route('a', '2026-01-01T00:00:00Z', ['h'], ['PathPrefix', '/api'], ['PathPrefix', '/api/v2']);
    const b = route('b', '2025-01-01T00:00:00Z', ['h'], ['PathPrefix', '/api']);
    expect(pick([a, b], 'h', '/api/v2/x')).toEqual({ route: 'coder/a', rule: 1 });
    expect(pick([a, b], 'h', '/api/x')).toEqual({ route: 'coder/b', rule: 0 });
    expect(pick([a, b], 'h', '/apix')).toBeUndefined();
  });
});
