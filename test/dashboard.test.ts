import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../src/observability/metrics.js';

const dashboard = JSON.parse(readFileSync(new URL('../helm/coder-reinit-guard/dashboards/coder-reinit-guard.json', import.meta.url), 'utf8')) as {
  panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
};

describe('the Grafana dashboard shipped in the chart', () => {
  it('queries only metrics the guard exports', async () => {
    const exported = new Set((await createMetrics(false).registry.getMetricsAsJSON()).map((m) => m.name));
    const used = dashboard.panels.flatMap((p) => p.targets.flatMap((t) => t.expr.match(/coder_reinit_guard_[a-z_]+/g) ?? []));
    expect(used.length).toBeGreaterThan(5);
    for (const name of used) expect(exported.has(name.replace(/_(bucket|sum|count)$/, '')), name).toBe(true);
  });

  it('shows suppressed events, decision latency, fail-open count and traffic', () => {
    const titles = dashboard.panels.map((p) => p.title).join(' | ');
    for (const t of [/suppress|stopped/i, /latency/i, /failed open/i, /traffic/i]) expect(titles).toMatch(t);
  });

  it('shows the pass-through traffic: requests by status class and origin, the guard\'s own 5xx, latency, bytes', () => {
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join('\n');
    for (const m of ['coder_reinit_guard_http_requests_total', 'coder_reinit_guard_http_request_duration_seconds_bucket', 'coder_reinit_guard_http_bytes_total']) expect(exprs).toContain(m);
    expect(exprs).toMatch(/origin="guard",code="5xx"/);
  });
});
