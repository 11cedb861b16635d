import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { documentedValues, readmePath, schemaNode, schemaPath, schemaPaths, schemaText, valuesPath, valuesTable, withDescriptions, withTable } from './values-docs.js';

/**
 * Every value is documented once, in values.yaml (helm-docs' `# --` comments), and the chart
 * README's table and the schema's descriptions are what values-docs.ts generates from it. On a
 * failure: `npx tsx test/chart/values-docs.ts --write`, then review the diff.
 */
const valuesText = readFileSync(valuesPath, 'utf8');
const schema = JSON.parse(readFileSync(schemaPath, 'utf8')) as Parameters<typeof schemaNode>[0];
const documented = documentedValues(valuesText);
const FIX = 'run `npx tsx test/chart/values-docs.ts --write` and review the diff';

describe('values documentation', () => {
  it('every value the schema knows has a `# --` comment in values.yaml, and every comment a schema property', () => {
    const keys = documented.map((d) => d.key);
    expect(keys.filter((k) => !schemaNode(schema, k)), 'documented but not in the schema').toEqual([]);
    expect(schemaPaths(schema).filter((p) => !keys.includes(p)), 'in the schema but without a `# --` comment').toEqual([]);
    for (const d of documented) expect(d.description.length, d.key).toBeGreaterThan(3);
  });

  it('every property of values.schema.json has a description (array items too)', () => {
    const missing: string[] = [];
    const walk = (node: { properties?: Record<string, unknown>; items?: unknown }, at: string) => {
      for (const [k, v] of Object.entries(node.properties ?? {})) {
        const child = v as { description?: string };
        if (!child.description?.trim()) missing.push(at + k);
        walk(child as typeof node, `${at}${k}.`);
      }
      if (node.items) walk(node.items as typeof node, `${at}[].`);
    };
    walk(schema, '');
    expect(missing).toEqual([]);
  });

  it("the schema's descriptions are the values.yaml comments", () => {
    expect(readFileSync(schemaPath, 'utf8'), FIX).toBe(schemaText(withDescriptions(schema, valuesText)));
  });

  it("the chart README's values table is the generated one", () => {
    const readme = readFileSync(readmePath, 'utf8');
    expect(readme, FIX).toBe(withTable(readme, valuesTable(valuesText, schema)));
    expect(readme).toContain('| `reinitGuard.db.existingSecret` | string | `""` |');
  });

  it('the parser reads helm-docs comments: `# --` starts one, `#` lines continue it, other comments do not count', () => {
    const text = ['# header, not a value comment', '', '# -- A.', '# more.', 'a:', '  # plain comment', '  b: 1', '  # -- C.', '  c:', '    - x: 1', 'd: 2'].join('\n');
    expect(documentedValues(text)).toEqual([
      { key: 'a', description: 'A. more.' },
      { key: 'a.c', description: 'C.' },
    ]);
  });
});
