import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { OPTIONS } from '../src/config/index.js';

const root = fileURLToPath(new URL('../', import.meta.url));
const read = (p: string) => readFile(path.join(root, p), 'utf8');
const docs = readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`);

/** GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'. */
const slug = (heading: string) => heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
const anchors = (markdown: string) => {
  const outside = markdown.replace(/^```[\s\S]*?^```/gm, '');
  return new Set([...outside.matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!)));
};

describe('README and docs keep their promises', () => {
  it('documents every option with its real default (docs/configuration.md)', async () => {
    const table = await read('docs/configuration.md');
    for (const o of OPTIONS) {
      const row = table.split('\n').find((l) => l.startsWith(`| \`${o.env}\` |`));
      expect(row, o.env).toBeDefined();
      if (o.default !== undefined) expect(row).toContain(`\`${o.default}\``);
    }
  });

  it('shows the least-privilege SQL exactly as the tested file has it (docs/install.md)', async () => {
    expect(await read('docs/install.md')).toContain((await read('sql/least-privilege-role.sql')).trim());
  });

  it("shows the audit's extra grants exactly as the tested file has them (docs/install.md)", async () => {
    expect(await read('docs/install.md')).toContain((await read('sql/audit-grants.sql')).trim());
  });

  it('CI runs the README test command after npm ci', async () => {
    const ci = await read('.ci/run');
    expect(ci).toMatch(/^npm ci$/m);
    expect(ci).toMatch(/^npm test$/m);
    expect(await read('README.md')).toContain('npm test ');
  });

  it('keeps the README short, with a diagram, linking every page of docs/', async () => {
    const readme = await read('README.md');
    expect(Buffer.byteLength(readme)).toBeLessThanOrEqual(12 * 1024);
    expect(readme).toMatch(/```text\n[\s\S]*takeover[\s\S]*```/);
    expect(docs.length).toBeGreaterThanOrEqual(8);
    for (const doc of docs) expect(readme, doc).toContain(`](${doc}`);
  });

  it('every relative link in the README, SECURITY.md and docs/ names a file and heading that exist', async () => {
    for (const file of ['README.md', 'SECURITY.md', 'CHANGELOG.md', ...docs]) {
      const text = (await read(file)).replace(/^```[\s\S]*?^```/gm, '');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue; // http(s), mailto
        const [file2, anchor] = target!.split('#') as [string, string | undefined];
        const dest = file2 ? path.join(path.dirname(path.join(root, file)), file2) : path.join(root, file);
        expect(existsSync(dest), `${file}: ${target}`).toBe(true);
        if (anchor && dest.endsWith('.md')) expect(anchors(await readFile(dest, 'utf8')).has(anchor), `${file}: ${target}`).toBe(true);
      }
    }
  });
});
