import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { OPTIONS } from '../src/config/index.js';

const read = (p: string) => readFile(new URL(`../${p}`, import.meta.url), 'utf8');

describe('README keeps its promises', () => {
  it('documents every option with its real default', async () => {
    const readme = await read('README.md');
    for (const o of OPTIONS) {
      const row = readme.split('\n').find((l) => l.startsWith(`| \`${o.env}\` |`));
      expect(row, o.env).toBeDefined();
      if (o.default !== undefined) expect(row).toContain(`\`${o.default}\``);
    }
  });

  it('shows the least-privilege SQL exactly as the tested file has it', async () => {
    expect(await read('README.md')).toContain((await read('sql/least-privilege-role.sql')).trim());
  });

  it("shows the audit's extra grants exactly as the tested file has them", async () => {
    expect(await read('README.md')).toContain((await read('sql/audit-grants.sql')).trim());
  });

  it('CI runs the README test command after npm ci', async () => {
    const ci = await read('.ci/run');
    expect(ci).toMatch(/^npm ci$/m);
    expect(ci).toMatch(/^npm test$/m);
    expect(await read('README.md')).toContain('npm test ');
  });
});
