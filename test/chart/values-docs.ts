import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/**
 * helm-docs for this chart, without the helm-docs binary: reads the `# --` comments of
 * values.yaml (helm-docs' convention: `# -- text` right above a key, continued by the `#` lines
 * that follow it) and writes
 *
 * - the values table of the chart README, between its `values-table` markers;
 * - the `description` of each values.schema.json property, from the same comment.
 *
 * `tsx test/chart/values-docs.ts --write` rewrites both; values-docs.test.ts fails while either
 * differs from what this generates.
 */
const root = fileURLToPath(new URL('../..', import.meta.url));
export const chartDir = path.join(root, 'helm/coder-reinit-guard');
export const valuesPath = path.join(chartDir, 'values.yaml');
export const schemaPath = path.join(chartDir, 'values.schema.json');
export const readmePath = path.join(chartDir, 'README.md');
export const BEGIN = '<!-- values-table:begin (generated from values.yaml by test/chart/values-docs.ts --write; do not edit) -->';
export const END = '<!-- values-table:end -->';

/** One documented value: its dotted path and its `# --` text. */
export interface DocumentedValue {
  key: string;
  description: string;
}

/** The documented keys of a values.yaml, in file order. */
export function documentedValues(text: string): DocumentedValue[] {
  const out: DocumentedValue[] = [];
  const stack: Array<{ indent: number; key: string }> = [];
  let comment: string[] | null = null;
  for (const line of text.split('\n')) {
    const c = /^(\s*)#(?: (.*))?$/.exec(line);
    if (c) {
      const body = c[2] ?? '';
      if (body.startsWith('-- ')) comment = [body.slice(3).trim()];
      else if (body === '--') comment = [];
      else if (comment) comment.push(body.trim());
      continue;
    }
    const k = /^(\s*)([A-Za-z0-9_.-]+):(\s|$)/.exec(line);
    if (!k) {
      // A blank line or a list item ends a comment block.
      comment = null;
      continue;
    }
    const indent = k[1]!.length;
    while (stack.length && stack[stack.length - 1]!.indent >= indent) stack.pop();
    stack.push({ indent, key: k[2]! });
    if (comment) out.push({ key: stack.map((s) => s.key).join('.'), description: comment.filter(Boolean).join(' ') });
    comment = null;
  }
  return out;
}

type Schema = { type?: string | string[]; properties?: Record<string, Schema>; items?: Schema; description?: string; [k: string]: unknown };

/** The schema node of a dotted values path (through `properties` only), if any. */
export function schemaNode(schema: Schema, key: string): Schema | undefined {
  let node: Schema | undefined = schema;
  for (const part of key.split('.')) node = node?.properties?.[part];
  return node;
}

/** Every property path of the schema reached through `properties` (not array items). */
export function schemaPaths(schema: Schema, prefix = ''): string[] {
  return Object.entries(schema.properties ?? {}).flatMap(([k, v]) => [prefix + k, ...schemaPaths(v, `${prefix}${k}.`)]);
}

const get = (values: unknown, key: string): unknown => key.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], values);

const typeOf = (v: unknown): string =>
  Array.isArray(v) ? 'list' : v === null ? 'null' : typeof v === 'object' ? 'object' : typeof v === 'number' ? (Number.isInteger(v) ? 'int' : 'float') : typeof v === 'boolean' ? 'bool' : 'string';

const cell = (s: string) => s.replace(/\|/g, '\\|');
/** Prose in a cell: `<` and `>` outside code spans would be read as HTML. */
const prose = (s: string) =>
  cell(s)
    .split('`')
    .map((part, i) => (i % 2 ? part : part.replace(/</g, '&lt;').replace(/>/g, '&gt;')))
    .join('`');

/** The README's values table. A group of values (a schema object with properties) has no default of its own. */
export function valuesTable(valuesText: string, schema: Schema): string {
  const values = parse(valuesText) as unknown;
  const rows = documentedValues(valuesText).map(({ key, description }) => {
    const v = get(values, key);
    const group = !!schemaNode(schema, key)?.properties;
    const def = group ? '' : `\`${cell(JSON.stringify(v))}\``;
    return `| \`${key}\` | ${typeOf(v)} | ${def} | ${prose(description)} |`;
  });
  return ['| Key | Type | Default | Description |', '|-----|------|---------|-------------|', ...rows].join('\n');
}

/** The README with its table replaced by the generated one. */
export function withTable(readme: string, table: string): string {
  const a = readme.indexOf(BEGIN);
  const b = readme.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${readmePath} has no ${BEGIN} ... ${END} markers`);
  return `${readme.slice(0, a + BEGIN.length)}\n${table}\n${readme.slice(b)}`;
}

/** The schema with each documented property's description set from values.yaml (description first). */
export function withDescriptions(schema: Schema, valuesText: string): Schema {
  const copy = JSON.parse(JSON.stringify(schema)) as Schema;
  for (const { key, description } of documentedValues(valuesText)) {
    const parts = key.split('.');
    const parent = parts.length === 1 ? copy : schemaNode(copy, parts.slice(0, -1).join('.'));
    const last = parts[parts.length - 1]!;
    const node = parent?.properties?.[last];
    if (!parent?.properties || !node) continue;
    const { description: _old, ...rest } = node;
    parent.properties[last] = { description, ...rest };
  }
  return copy;
}

export const schemaText = (schema: Schema) => `${JSON.stringify(schema, null, 2)}\n`;

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const valuesText = readFileSync(valuesPath, 'utf8');
  const schema = withDescriptions(JSON.parse(readFileSync(schemaPath, 'utf8')) as Schema, valuesText);
  if (process.argv.includes('--write')) {
    writeFileSync(schemaPath, schemaText(schema));
    writeFileSync(readmePath, withTable(readFileSync(readmePath, 'utf8'), valuesTable(valuesText, schema)));
  } else {
    process.stdout.write(`${valuesTable(valuesText, schema)}\n`);
  }
}
