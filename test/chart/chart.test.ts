import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';

/**
 * Renders every scenario in helm/coder-reinit-guard/ci/ with helm/tools/render (Go's
 * text/template and sprig, as Helm itself; no Helm on this machine), compares with the
 * golden files in helm/tests/golden/, validates each object against the Kubernetes API
 * schemas (kubernetes-models) and the values against values.schema.json. When a real
 * `helm` is on PATH it also runs `helm lint` and compares `helm template` with the same
 * golden files. UPDATE_GOLDEN=1 rewrites the golden files.
 */
const root = fileURLToPath(new URL('../..', import.meta.url));
const chart = path.join(root, 'helm/coder-reinit-guard');
const golden = path.join(root, 'helm/tests/golden');
const bin = path.join(root, '.tmp/chart-render');
const scenarios = readdirSync(path.join(chart, 'ci')).filter((f) => f.endsWith('-values.yaml')).sort();
const goEnv = { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode', GOCACHE: path.join(root, '.tmp/gocache'), GOFLAGS: '' };

const render = (args: string[]) => spawnSync(bin, [...args], { encoding: 'utf8', cwd: root });
type Obj = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec?: Record<string, unknown>; data?: Record<string, string> };
const objects = (text: string): Obj[] => parseAllDocuments(text).map((d) => d.toJS() as Obj).filter(Boolean);

type Model = new (x: unknown) => { validate(): void };

/** The kubernetes-models class for an object, found by apiVersion and kind. */
async function modelFor(o: Obj): Promise<Model | undefined> {
  if (o.apiVersion === 'monitoring.coreos.com/v1' && o.kind === 'ServiceMonitor') return ServiceMonitor as unknown as Model;
  try {
    const mod = (await import(`kubernetes-models/${o.apiVersion}/${o.kind}`)) as Record<string, unknown>;
    return (mod[o.kind] ?? mod.default) as Model;
  } catch {
    return undefined;
  }
}

beforeAll(() => {
  mkdirSync(path.join(root, '.tmp'), { recursive: true });
  execFileSync('go', ['build', '-o', bin, './helm/tools/render'], { cwd: root, env: goEnv, stdio: 'inherit' });
});

describe.each(scenarios)('chart scenario %s', (scenario) => {
  const name = scenario.replace(/-values\.yaml$/, '');
  let text = '';
  beforeAll(() => {
    const r = render([chart, path.join(chart, 'ci', scenario)]);
    expect(r.stderr).toBe('');
    text = r.stdout;
  });

  it('renders as the golden file', () => {
    const file = path.join(golden, `${name}.yaml`);
    if (process.env.UPDATE_GOLDEN || !existsSync(file)) writeFileSync(file, text);
    expect(text).toBe(readFileSync(file, 'utf8'));
  });

  it('every object is valid against the Kubernetes API schemas', async () => {
    for (const o of objects(text)) {
      const Model = await modelFor(o);
      expect(Model, `${o.apiVersion} ${o.kind}`).toBeDefined();
      expect(() => new Model!(o).validate(), `${o.kind}/${o.metadata.name}`).not.toThrow();
    }
  });

  it("labels follow Coder's chart; selectors are exactly name and instance", () => {
    for (const o of objects(text)) {
      expect(o.metadata.labels).toMatchObject({
        'app.kubernetes.io/name': 'coder-reinit-guard',
        'app.kubernetes.io/instance': 'coder-reinit-guard',
        'app.kubernetes.io/part-of': 'coder',
        'app.kubernetes.io/managed-by': 'Helm',
      });
      expect(o.metadata.labels?.['helm.sh/chart']).toMatch(/^coder-reinit-guard-/);
      if (o.kind === 'Deployment') {
        expect((o.spec as { selector: unknown }).selector).toEqual({ matchLabels: { 'app.kubernetes.io/name': 'coder-reinit-guard', 'app.kubernetes.io/instance': 'coder-reinit-guard' } });
      }
    }
  });

  it('the values pass values.schema.json', () => {
    const schema = JSON.parse(readFileSync(path.join(chart, 'values.schema.json'), 'utf8')) as object;
    const defaults = parse(readFileSync(path.join(chart, 'values.yaml'), 'utf8')) as { reinitGuard: Record<string, unknown> };
    const over = parse(readFileSync(path.join(chart, 'ci', scenario), 'utf8')) as { reinitGuard: Record<string, unknown> };
    const merged = { reinitGuard: deepMerge(structuredClone(defaults.reinitGuard), over.reinitGuard) };
    const validate = new Ajv({ allErrors: true }).compile(schema);
    expect(validate(merged), JSON.stringify(validate.errors)).toBe(true);
  });

  it('NOTES.txt tells the operator the next step for the topology', () => {
    const notes = render(['-notes', chart, path.join(chart, 'ci', scenario)]).stdout;
    expect(notes).toMatch(/Next step:/);
    expect(notes).toMatch(scenario.startsWith('ingress') ? /only\s+\/api\/v2\/workspaceagents\/me\/reinit/ : /coder\.service\.enable=false/);
  });

  it.runIf(hasHelm())('helm lint passes and helm template matches the golden file', () => {
    execFileSync('helm', ['lint', chart, '-f', path.join(chart, 'ci', scenario)], { stdio: 'pipe' });
    const out = execFileSync('helm', ['template', 'coder-reinit-guard', chart, '-n', 'coder', '-f', path.join(chart, 'ci', scenario)], { encoding: 'utf8' });
    const key = (o: Obj) => `${o.kind}/${o.metadata.name}`;
    const sort = (xs: Obj[]) => xs.sort((a, b) => key(a).localeCompare(key(b)));
    expect(sort(objects(out))).toEqual(sort(objects(text)));
  });
});

describe('topology-specific objects and failures', () => {
  const objs = (scenario: string) => objects(render([chart, path.join(chart, 'ci', scenario)]).stdout);

  it('takeover: a Service named coder selects the guard; the upstream selects the coder pods', () => {
    const o = objs('takeover-values.yaml');
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect(coder.spec).toMatchObject({ type: 'LoadBalancer', loadBalancerIP: '10.0.0.42', selector: { 'app.kubernetes.io/name': 'coder-reinit-guard' } });
    expect((coder.spec as { ports: Array<{ port: number }> }).ports[0]!.port).toBe(80);
    const up = o.find((x) => x.metadata.name === 'coder-upstream')!;
    expect(up.spec).toMatchObject({ selector: { 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' } });
    expect(o.find((x) => x.kind === 'ConfigMap')!.data!.REINIT_GUARD_UPSTREAM).toBe('http://coder-upstream.coder.svc.cluster.local:80');
  });

  it('tls: the coder Service serves 443 from the guard, which reaches coder over https', () => {
    const o = objs('tls-values.yaml');
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect((coder.spec as { ports: Array<{ name: string; port: number }> }).ports.map((p) => [p.name, p.port])).toEqual([['http', 80], ['https', 443]]);
    const cm = o.find((x) => x.kind === 'ConfigMap')!.data!;
    expect(cm).toMatchObject({
      REINIT_GUARD_UPSTREAM: 'https://coder-upstream.coder.svc.cluster.local:443',
      REINIT_GUARD_TLS_LISTEN: '0.0.0.0:8443',
      REINIT_GUARD_UPSTREAM_SERVERNAME: 'coder.example.com',
      REINIT_GUARD_UPSTREAM_CA_FILE: '/etc/coder-reinit-guard/upstream-ca/ca.crt',
    });
  });

  it('ingress: only the Exact /reinit path goes to the guard, which forwards to the coder Service', () => {
    const o = objs('ingress-values.yaml');
    expect(o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')).toBeUndefined();
    const ing = o.find((x) => x.kind === 'Ingress')!;
    expect(JSON.stringify(ing.spec)).toContain('"path":"/api/v2/workspaceagents/me/reinit","pathType":"Exact"');
    expect(o.find((x) => x.kind === 'ConfigMap')!.data!.REINIT_GUARD_UPSTREAM).toBe('http://coder.coder.svc.cluster.local:80');
  });

  it.each([
    ['reinitGuard:\n  topology: ingress\n', 'reinitGuard.ingress.host is required with topology ingress'],
    ['reinitGuard:\n  topology: sidecar\n', 'reinitGuard.topology "sidecar" is not valid: use takeover or ingress'],
    ['reinitGuard:\n  mode: "on"\n', 'reinitGuard.mode "on" is not valid: use enforce, observe or off'],
    ['reinitGuard:\n  tls:\n    enable: true\n', 'reinitGuard.tls.secretName is required when reinitGuard.tls.enable is true'],
  ])('fails early with what to set: %j', (values, message) => {
    const file = path.join(root, '.tmp', `bad-${Buffer.from(values).toString('hex').slice(0, 16)}.yaml`);
    writeFileSync(file, values);
    const r = render([chart, file]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(message);
  });
});

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(b ?? {})) {
    a[k] = v && typeof v === 'object' && !Array.isArray(v) && a[k] && typeof a[k] === 'object' ? deepMerge(a[k] as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return a;
}

function hasHelm(): boolean {
  return spawnSync('helm', ['version'], { stdio: 'ignore' }).status === 0;
}
