import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
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

/**
 * The `helm install`/`helm upgrade` commands an operator copies: the lines of fenced code blocks
 * and the inline code spans of a Markdown file or of the alerts' runbooks, the indented lines of NOTES.txt.
 * Placeholders (`<guard release>`) and template actions (`{{ .Release.Name }}`) count as one word.
 */
function helmCommands(file: string, text: string): Array<{ file: string; command: string; release: string; chart: string }> {
  const spans = file.endsWith('NOTES.txt')
    ? text.split('\n').filter((l) => /^\s/.test(l)) // the commands are indented; prose is not
    : [...text.matchAll(/^[ \t]*```[^\n]*\n([\s\S]*?)^[ \t]*```/gm)].flatMap((m) => m[1]!.split('\n')).concat([...text.replace(/^[ \t]*```[\s\S]*?^[ \t]*```/gm, '').matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!));
  const out = [];
  for (const span of spans) {
    const words = span.replace(/\{\{[^}]*\}\}|<[^<>]*>/g, (m) => m.replace(/\s+/g, '_')).trim().split(/\s+/);
    for (let i = 0; i < words.length - 1; i++) {
      if (words[i] !== 'helm' || !['install', 'upgrade'].includes(words[i + 1]!)) continue;
      const positional = words.slice(i + 2).filter((w) => !w.startsWith('-'));
      // Prose naming the subcommand (`helm upgrade --install`) is no command to copy.
      if (positional.length >= 2) out.push({ file, command: words.join(' '), release: positional[0]!, chart: positional[1]! });
    }
  }
  return out;
}

describe('pinned versions', () => {
  it('every helm install and upgrade in the docs, NOTES.txt and the runbooks pins its chart', async () => {
    const version = (parse(await read('helm/coder-reinit-guard/Chart.yaml')) as { version: string }).version;
    const files = ['README.md', ...docs, 'helm/coder-reinit-guard/README.md', 'helm/coder-reinit-guard/templates/NOTES.txt', 'helm/coder-reinit-guard/rules/alerts.yaml'];
    const commands = [];
    for (const file of files) commands.push(...helmCommands(file, await read(file)));
    // The commands that matter are all there: takeover, switch, rollback, enforce, removal.
    expect(commands.length, commands.map((c) => `${c.file}: ${c.command}`).join('\n')).toBeGreaterThan(20);
    const notes = await read('helm/coder-reinit-guard/templates/NOTES.txt');
    const bad: string[] = [];
    for (const c of commands) {
      const where = `${c.file}: ${c.command}`;
      if (c.chart === 'coder-v2/coder') {
        // coder's chart: the version its release runs now, or Helm moves coderd to the newest chart.
        const pinned = /--version "\$\(helm get metadata \S+ -n \S+ -o json \| jq -r \.version\)"/.test(c.command)
          || (c.file.endsWith('NOTES.txt') && c.command.includes('{{_$pin_}}') && notes.includes('$pin := printf "--version \\"$(helm get metadata %s -n %s -o json | jq -r .version)\\""'));
        if (!pinned) bad.push(`${where} (coder's chart without --version "$(helm get metadata ...)")`);
      } else if (c.file.endsWith('NOTES.txt') && c.chart === '{{_$chart_}}') {
        // NOTES.txt names this chart's own package, ./<name>-<version>.tgz (rendered in install.test.ts).
        if (!notes.includes('$chart := printf "./%s-%s.tgz" .Chart.Name .Chart.Version')) bad.push(`${where} ($chart is not the versioned package)`);
      } else if (/coder-reinit-guard/.test(c.chart)) {
        // The guard's chart: its package, with the version in its name (a directory is no pin:
        // Helm ignores --version for a path). The runbooks cannot know the version: a placeholder.
        const m = /^\.\/coder-reinit-guard-(.+)\.tgz$/.exec(c.chart);
        const ok = m && (m[1] === version || (c.file.endsWith('alerts.yaml') && m[1] === '<chart_version>'));
        if (!ok) bad.push(`${where} (the guard's chart is not ./coder-reinit-guard-${version}.tgz)`);
      } else {
        bad.push(`${where} (unknown chart ${c.chart})`);
      }
    }
    expect(bad).toEqual([]);
  });
});
