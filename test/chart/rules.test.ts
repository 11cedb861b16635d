import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { chart, root, run } from './tools.js';

/**
 * The alerts the chart ships (rules/alerts.yaml, the PrometheusRule's spec) meet promtool, from
 * Debian's prometheus package (.ci/run installs it): the file is valid and each alert has a
 * unit test showing it firing and not firing (helm/tests/rules/alerts-test.yaml).
 */
const rules = path.join(chart, 'rules/alerts.yaml');
const tests = path.join(root, 'helm/tests/rules/alerts-test.yaml');

describe('alert rules', () => {
  it('promtool check rules accepts them', () => {
    const r = run('promtool', ['check', 'rules', rules]);
    expect(r.stdout + r.stderr).toContain('SUCCESS: 6 rules found');
    expect(r.status).toBe(0);
  });

  it('promtool test rules passes, one test group per alert', () => {
    const alerts = (parse(readFileSync(rules, 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; annotations: Record<string, string>; for: string }> }> }).groups.flatMap((g) => g.rules);
    const groups = (parse(readFileSync(tests, 'utf8')) as { tests: Array<{ name: string; alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }> }).tests;
    expect(groups.map((t) => t.name).sort()).toEqual(alerts.map((a) => a.alert).sort());
    for (const t of groups) {
      const cases = t.alert_rule_test.filter((c) => c.alertname === t.name);
      expect(cases.some((c) => c.exp_alerts.length > 0), `${t.name} fires`).toBe(true);
      expect(cases.some((c) => c.exp_alerts.length === 0), `${t.name} stays quiet`).toBe(true);
    }
    for (const a of alerts) {
      expect(a.annotations.runbook, `${a.alert} has a runbook`).toMatch(/\S{20}/);
      expect(a.for, `${a.alert} waits before firing`).toMatch(/^\d+[mhd]$/);
    }
    const r = run('promtool', ['test', 'rules', tests]);
    expect(r.stdout + r.stderr).toContain('SUCCESS');
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });
});
