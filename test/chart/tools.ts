import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** Paths of the chart, its test data and the tools `tools/build.sh` built from their modules. */
export const root = fileURLToPath(new URL('../..', import.meta.url));
export const chart = path.join(root, 'helm/coder-reinit-guard');
export const goldenDir = path.join(root, 'helm/tests/golden');
export const cache = process.env.TOOLS_CACHE ?? path.join(root, '.cache');
export const bin = path.join(cache, 'bin');
/** coder's own chart and the CRDs, copied out of their modules (tools/manifests). */
export const manifests = path.join(cache, 'manifests');

/** The scenarios: every `ci/*-values.yaml`, by name (`takeover`, `ingress`, ...). */
export const scenarios = readdirSync(path.join(chart, 'ci'))
  .filter((f) => f.endsWith('-values.yaml'))
  .map((f) => f.replace(/-values\.yaml$/, ''))
  .sort();
export const valuesFile = (scenario: string) => path.join(chart, 'ci', `${scenario}-values.yaml`);

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool and returns what it printed; never throws on a non-zero exit. */
export function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Run {
  const r = spawnSync(file, args, { encoding: 'utf8', env: { ...process.env, ...env }, input, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Like run, but fails with the tool's output unless it exits 0. */
export function runOk(file: string, args: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = run(file, args, env);
  if (r.status !== 0) throw new Error(`${path.basename(file)} ${args.join(' ')} exited ${r.status}:\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A Helm binary with a home of its own (no repositories, plugins or caches from the machine). */
export interface Helm {
  name: 'helm3' | 'helm4';
  /** Runs helm; `kubeconfig` points it at a cluster. */
  run(args: string[], kubeconfig?: string): Run;
  ok(args: string[], kubeconfig?: string): string;
  /** Runs helm without blocking (for commands that wait on the cluster, such as `helm test`). */
  start(args: string[], kubeconfig?: string): Promise<Run>;
}

function helm(name: Helm['name']): Helm {
  const file = path.join(bin, name);
  let home: string | undefined;
  const env = (kubeconfig?: string): NodeJS.ProcessEnv => {
    if (!home) {
      const dir = mkdtempSync(path.join(os.tmpdir(), `${name}-home-`));
      process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
      home = dir;
    }
    return {
      HELM_CACHE_HOME: path.join(home, 'cache'),
      HELM_CONFIG_HOME: path.join(home, 'config'),
      HELM_DATA_HOME: path.join(home, 'data'),
      KUBECONFIG: kubeconfig ?? path.join(home, 'no-cluster'),
      HELM_NAMESPACE: '',
      HELM_KUBECONTEXT: '',
    };
  };
  return {
    name,
    run: (args, kubeconfig) => run(file, args, env(kubeconfig)),
    ok: (args, kubeconfig) => runOk(file, args, env(kubeconfig)),
    start: (args, kubeconfig) =>
      new Promise<Run>((resolve, reject) => {
        const child = spawn(file, args, { env: { ...process.env, ...env(kubeconfig) } });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
        child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        child.once('error', reject);
        child.once('close', (status) => resolve({ status, stdout, stderr }));
      }),
  };
}

/** Both Helm majors an operator may run: every chart test runs with each. */
export const helms: Helm[] = [helm('helm3'), helm('helm4')];

/** Fails early, with what to run, when tools/build.sh has not built the tools. */
export function requireTools(...names: string[]): void {
  const missing = names.filter((n) => !existsSync(path.join(bin, n)));
  if (missing.length) throw new Error(`${missing.join(', ')} not built: run tools/build.sh (npm run test:chart does)`);
}

/** A Kubernetes object as the tests read it. */
export interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; [k: string]: unknown };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
  [k: string]: unknown;
}

/** The objects of a multi-document YAML stream (empty documents skipped). */
export const objects = (text: string): Obj[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => !!o);

/** A scratch directory under .tmp/ (git-ignored). */
export function scratch(prefix: string): string {
  mkdirSync(path.join(root, '.tmp'), { recursive: true });
  return mkdtempSync(path.join(root, '.tmp', `${prefix}-`));
}
