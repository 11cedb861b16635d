import { cpSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterDir, startCluster, type Cluster } from './cluster.js';
import { pick, type Route } from './gateway.js';
import { chart, goldenDir, helms, manifests, objects, requireTools, scenarios, scratch, valuesFile, type Helm, type Obj } from './tools.js';

/**
 * The chart meets a real Kubernetes API server (etcd + kube-apiserver built from their modules,
 * cluster.ts), beside coder's own chart (helm/coder of github.com/coder/coder/v2 v2.34.3,
 * installed with real Helm as an operator would):
 *
 * - every object of every scenario passes the server's validation (server-side dry run with
 *   strict field validation: schema, semantic checks, CRD schemas and CEL rules, admission);
 * - each Helm major walks the README's three topologies: install (refused while the coder
 *   release owns the Service "coder", accepted after the documented step), Service selectors
 *   against the Deployments' pod templates, upgrade (checksum annotation), rollback, uninstall
 *   (nothing left behind), and the Gateway API precedence of the gateway topology's route.
 */
const GUARD = 'coder-reinit-guard';
const CODER_VERSION = 'v2.34.3';
let cluster: Cluster;

type List<T = Obj> = { items: T[] };
type Status = { message?: string; reason?: string };

// ---- API helpers -----------------------------------------------------------------------------

const discovery = new Map<string, Array<{ name: string; kind: string; namespaced: boolean; verbs: string[] }>>();

/** The API path prefix and resource of a kind, from the server's discovery. */
async function resource(apiVersion: string, kind: string) {
  const base = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  if (!discovery.has(base)) {
    const r = await cluster.api<{ resources: Array<{ name: string; kind: string; namespaced: boolean; verbs: string[] }> }>('GET', base);
    expect(r.status, `discovery ${base}`).toBe(200);
    discovery.set(base, r.body.resources);
  }
  const res = discovery.get(base)!.find((x) => x.kind === kind && !x.name.includes('/'));
  if (!res) throw new Error(`${apiVersion} ${kind} is not served`);
  return { collection: (ns?: string) => (res.namespaced ? `${base}/namespaces/${ns}/${res.name}` : `${base}/${res.name}`) };
}

async function create(o: Obj, ns?: string, query = ''): Promise<{ status: number; body: Status & Obj }> {
  const r = await resource(o.apiVersion, o.kind);
  return cluster.api('POST', `${r.collection(ns ?? o.metadata.namespace)}${query}`, o);
}

async function mustCreate(o: Obj, ns?: string): Promise<void> {
  const r = await create(o, ns);
  expect(r.status, `${o.kind}/${o.metadata.name}: ${r.body.message}`).toBe(201);
}

async function get<T = Obj>(apiVersion: string, kind: string, ns: string, name: string): Promise<T | undefined> {
  const r = await cluster.api<T>('GET', `${(await resource(apiVersion, kind)).collection(ns)}/${name}`);
  if (r.status === 404) return undefined;
  expect(r.status).toBe(200);
  return r.body;
}

async function list<T = Obj>(apiVersion: string, kind: string, ns: string): Promise<T[]> {
  const r = await cluster.api<List<T>>('GET', (await resource(apiVersion, kind)).collection(ns));
  expect(r.status).toBe(200);
  return r.body.items;
}

/** Everything in a namespace, of every listable resource the server serves: "kind/name" sorted. */
async function inventory(ns: string): Promise<string[]> {
  const groups = (await cluster.api<{ groups: Array<{ preferredVersion: { groupVersion: string } }> }>('GET', '/apis')).body.groups;
  const bases = ['/api/v1', ...groups.map((g) => `/apis/${g.preferredVersion.groupVersion}`)];
  const out: string[] = [];
  for (const base of bases) {
    const r = await cluster.api<{ resources: Array<{ name: string; kind: string; namespaced: boolean; verbs: string[] }> }>('GET', base);
    for (const res of r.body.resources) {
      if (!res.namespaced || res.name.includes('/') || !res.verbs.includes('list') || res.kind === 'Event') continue;
      const items = await cluster.api<List>('GET', `${base}/namespaces/${ns}/${res.name}`);
      for (const o of items.body.items ?? []) out.push(`${res.kind}/${o.metadata.name}`);
    }
  }
  return out.sort();
}

const namespace = (name: string): Obj => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } });

// ---- Selectors against pod templates -----------------------------------------------------------

type Deployment = Obj & { spec: { replicas: number; template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: { containers: Array<{ ports?: Array<{ name?: string; containerPort: number }> }> } } } };
type Service = Obj & { spec: { selector?: Record<string, string>; ports: Array<{ name: string; port: number; targetPort: string | number }> } };

const selects = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The Deployments whose pods a label selector selects, read back from the API. */
async function selected(ns: string, selector: Record<string, string>): Promise<string[]> {
  const deployments = await list<Deployment>('apps/v1', 'Deployment', ns);
  return deployments.filter((d) => selects(selector, d.spec.template.metadata.labels)).map((d) => d.metadata.name).sort();
}

/** Every port of a Service resolves to a container port of the pods it selects. */
async function portsResolve(ns: string, svc: Service): Promise<void> {
  for (const d of await list<Deployment>('apps/v1', 'Deployment', ns)) {
    if (!selects(svc.spec.selector!, d.spec.template.metadata.labels)) continue;
    const ports = d.spec.template.spec.containers.flatMap((c) => c.ports ?? []);
    for (const p of svc.spec.ports) {
      const ok = ports.some((c) => (typeof p.targetPort === 'number' ? c.containerPort === p.targetPort : c.name === p.targetPort));
      expect(ok, `Service ${svc.metadata.name} port ${p.name} -> ${p.targetPort} on Deployment ${d.metadata.name}`).toBe(true);
    }
  }
}

// ---- Setup --------------------------------------------------------------------------------------

beforeAll(async () => {
  requireTools('etcd', 'kube-apiserver', 'helm3', 'helm4');
  cluster = await startCluster(clusterDir());
  console.log(`etcd + kube-apiserver ready in ${cluster.startMs} ms`);

  // The CRDs the optional objects need, from their modules (tools/manifests), as an operator's
  // cluster has them: Prometheus Operator's ServiceMonitor and PrometheusRule, Gateway API.
  const crdDir = path.join(manifests, 'crds');
  const names: string[] = [];
  for (const file of readdirSync(crdDir).sort()) {
    for (const crd of objects(readFileSync(path.join(crdDir, file), 'utf8'))) {
      await mustCreate(crd);
      names.push(crd.metadata.name);
    }
  }
  for (const name of names) {
    for (let i = 0; ; i++) {
      const crd = (await cluster.api<{ status?: { conditions?: Array<{ type: string; status: string }> } }>('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`)).body;
      if (crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (i > 200) throw new Error(`CRD ${name} not established`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  for (const gv of ['monitoring.coreos.com/v1', 'gateway.networking.k8s.io/v1']) {
    for (let i = 0; (await cluster.api('GET', `/apis/${gv}`)).status !== 200; i++) {
      if (i > 200) throw new Error(`${gv} not served`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  // The operator's Gateway, which coder's HTTPRoute and ours attach to.
  await mustCreate(namespace('gateway-system'));
  await mustCreate({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GatewayClass', metadata: { name: 'example' }, spec: { controllerName: 'example.com/gateway-controller' } });
  await mustCreate({
    apiVersion: 'gateway.networking.k8s.io/v1',
    kind: 'Gateway',
    metadata: { name: 'public', namespace: 'gateway-system' },
    spec: {
      gatewayClassName: 'example',
      listeners: [{ name: 'https', protocol: 'HTTPS', port: 443, tls: { mode: 'Terminate', certificateRefs: [{ name: 'wildcard-tls' }] }, allowedRoutes: { namespaces: { from: 'All' } } }],
    },
  });
}, 300_000);

afterAll(async () => {
  await cluster?.stop();
});

// ---- Every object passes the server's validation -------------------------------------------------

describe('every object of every scenario passes the API server (server-side dry run, strict fields)', () => {
  beforeAll(async () => {
    await mustCreate(namespace('coder'));
    // A real cluster's controller-manager gives every namespace a ServiceAccount "default"; this
    // one runs none, and the ServiceAccount admission plugin checks a Pod's (the helm test Pod's).
    await mustCreate({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } } as Obj, 'coder');
  });

  it.each(scenarios)('%s', async (scenario) => {
    const objs = objects(readFileSync(path.join(goldenDir, `${scenario}.yaml`), 'utf8'));
    expect(objs.length).toBeGreaterThan(0);
    for (const o of objs) {
      const r = await create(o, 'coder', '?dryRun=All&fieldValidation=Strict');
      expect(r.status, `${o.kind}/${o.metadata.name}: ${r.body.message}`).toBe(201);
    }
  });

  it('and the server refuses what it should: an HTTPRoute hostname the Gateway API CRD does not allow', async () => {
    const route = objects(readFileSync(path.join(goldenDir, 'gateway.yaml'), 'utf8')).find((o) => o.kind === 'HTTPRoute')!;
    const bad = { ...route, spec: { ...route.spec, hostnames: ['Coder_Example'] } };
    const r = await create(bad, 'coder', '?dryRun=All&fieldValidation=Strict');
    expect(r.status).toBe(422);
    expect(r.body.message).toContain('spec.hostnames[0]');
  });
});

// ---- The README's topologies, walked with each Helm ----------------------------------------------

describe.each(helms)('$name walks the README', (helm: Helm) => {
  let coderChart: string;
  const h = (args: string[]) => helm.run(args, cluster.kubeconfig);
  const ok = (args: string[]) => helm.ok(args, cluster.kubeconfig);
  const ns = (topology: string) => `${helm.name}-${topology}`;

  /** Installs the coder release with coder's own chart, as the README assumes it is. */
  async function installCoder(n: string, ...sets: string[]): Promise<void> {
    await mustCreate(namespace(n));
    // What a controller-manager creates in every namespace (this cluster runs none): the helm
    // test Pod runs as it.
    await mustCreate({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } } as Obj, n);
    await mustCreate({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'coder-db-url' }, stringData: { url: 'postgres://coder:pw@postgres:5432/coder?sslmode=disable' } } as Obj, n);
    ok(['install', 'coder', coderChart, '-n', n, '--set', `coder.image.tag=${CODER_VERSION}`, ...sets.flatMap((s) => ['--set', s])]);
  }

  let dir: string;
  beforeAll(() => {
    // Helm writes the dependency (libcoder) into the chart: work on a copy.
    dir = scratch(`${helm.name}-coder-chart`);
    cpSync(path.join(manifests, 'coder'), path.join(dir, 'coder'), { recursive: true });
    cpSync(path.join(manifests, 'libcoder'), path.join(dir, 'libcoder'), { recursive: true });
    coderChart = path.join(dir, 'coder');
    ok(['dependency', 'build', coderChart]);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  describe('takeover', () => {
    const n = ns('takeover');
    let beforeGuard: string[];
    let checksum1: string;
    const guardDeployment = () => get<Deployment>('apps/v1', 'Deployment', n, GUARD);
    const checksum = async () => (await guardDeployment())!.spec.template.metadata.annotations!['checksum/config']!;

    it("starts from what the coder chart leaves: its Deployment and a Service coder owned by release coder", async () => {
      await installCoder(n);
      const svc = (await get<Service>('v1', 'Service', n, 'coder'))!;
      expect(svc.metadata.annotations).toMatchObject({ 'meta.helm.sh/release-name': 'coder', 'meta.helm.sh/release-namespace': n });
      expect(svc.metadata.labels).toMatchObject({ 'app.kubernetes.io/managed-by': 'Helm', 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' });
      expect(await selected(n, svc.spec.selector!)).toEqual(['coder']);
    });

    it('Helm refuses to take the Service coder while the coder release owns it, and leaves nothing', async () => {
      const before = await inventory(n);
      const r = h(['install', GUARD, chart, '-n', n, '-f', valuesFile('takeover')]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`Service "coder" in namespace "${n}" exists and cannot be imported into the current release: invalid ownership metadata`);
      expect(r.stderr).toContain('key "meta.helm.sh/release-name" must equal "coder-reinit-guard": current value is "coder"');
      expect(await inventory(n)).toEqual(before);
      expect((await get<Service>('v1', 'Service', n, 'coder'))!.spec.selector).toMatchObject({ 'app.kubernetes.io/name': 'coder' });
    });

    it('once the coder release no longer owns the Service the install succeeds (the gap-free order is in handover.test.ts)', async () => {
      ok(['upgrade', 'coder', coderChart, '-n', n, '--reuse-values', '--set', 'coder.service.enable=false']);
      expect(await get('v1', 'Service', n, 'coder')).toBeUndefined();
      beforeGuard = await inventory(n);
      const out = ok(['install', GUARD, chart, '-n', n, '-f', valuesFile('takeover')]);
      expect(out).toContain('STATUS: deployed');
      // The scenario's routeTo=guard: NOTES describe the state after the switch, with the checks and the rollback line.
      expect(out).toContain('Next step: check. Agents now reach the guard through the Service "coder"');
      expect(out).toContain("get endpointslices -l 'kubernetes.io/service-name in (coder,coder-upstream)'");
      // The guard's own chart pinned: the package of this chart version, never a directory.
      expect(out).toMatch(/Roll back [^\n]*\n\n {2}helm upgrade coder-reinit-guard \.\/coder-reinit-guard-0\.1\.0\.tgz -n \S+ --reuse-values --set reinitGuard\.service\.routeTo=coder --wait\n/);
      const svc = (await get<Service>('v1', 'Service', n, 'coder'))!;
      expect(svc.metadata.annotations).toMatchObject({ 'meta.helm.sh/release-name': GUARD, 'service.beta.kubernetes.io/aws-load-balancer-internal': 'true' });
      checksum1 = await checksum();
      expect(checksum1).toMatch(/^[0-9a-f]{64}$/);
    });

    it('the takeover Services select exactly the intended pods, on ports they expose', async () => {
      const svc = async (name: string) => (await get<Service>('v1', 'Service', n, name))!;
      expect(await selected(n, (await svc('coder')).spec.selector!)).toEqual([GUARD]);
      expect(await selected(n, (await svc('coder-upstream')).spec.selector!)).toEqual(['coder']);
      expect(await selected(n, (await svc(GUARD)).spec.selector!)).toEqual([GUARD]);
      for (const name of ['coder', 'coder-upstream', GUARD]) await portsResolve(n, await svc(name));
      const pdb = (await get<Obj>('policy/v1', 'PodDisruptionBudget', n, GUARD))!;
      expect(await selected(n, (pdb.spec!.selector as { matchLabels: Record<string, string> }).matchLabels)).toEqual([GUARD]);
      const cm = (await get<Obj>('v1', 'ConfigMap', n, GUARD))!;
      expect(cm.data!.REINIT_GUARD_UPSTREAM).toBe(`http://coder-upstream.${n}.svc.cluster.local:80`);
    });

    it('helm test runs the chart\'s test Pod and reports its result (this test plays the kubelet: no pod runs here)', async () => {
      const pod = `${GUARD}-test`;
      const run = helm.start(['test', GUARD, '-n', n, '--timeout', '90s'], cluster.kubeconfig);
      let created: Obj | undefined;
      await expect.poll(async () => (created = await get<Obj>('v1', 'Pod', n, pod)), { timeout: 60_000, interval: 250 }).toBeDefined();
      expect(created!.metadata.annotations).toMatchObject({ 'helm.sh/hook': 'test' });
      const c = (created!.spec!.containers as Array<{ image: string; env: Array<{ name: string; value: string }> }>)[0]!;
      expect(c.image).toBe('busybox:1.37.0');
      expect(c.env).toEqual([{ name: 'GUARD', value: `${GUARD}.${n}.svc` }]);
      // What the kubelet reports once the checks exit 0.
      const patched = await cluster.api('PATCH', `/api/v1/namespaces/${n}/pods/${pod}/status`, { status: { phase: 'Succeeded' } }, 'application/merge-patch+json');
      expect(patched.status).toBe(200);
      const r = await run;
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`TEST SUITE:\\s+${pod}[\\s\\S]*Phase:\\s+Succeeded`));
      // hook-succeeded: nothing is left behind.
      await expect.poll(() => get<Obj>('v1', 'Pod', n, pod), { timeout: 30_000 }).toBeUndefined();
    });

    it('helm upgrade with a changed configuration changes the checksum annotation; one without does not', async () => {
      ok(['upgrade', GUARD, chart, '-n', n, '--reuse-values', '--set', 'reinitGuard.replicaCount=3']);
      expect(await checksum()).toBe(checksum1);
      expect((await guardDeployment())!.spec.replicas).toBe(3);
      ok(['upgrade', GUARD, chart, '-n', n, '--reuse-values', '--set', 'reinitGuard.logLevel=debug']);
      expect(await checksum()).not.toBe(checksum1);
      expect((await get<Obj>('v1', 'ConfigMap', n, GUARD))!.data!.REINIT_GUARD_LOG_LEVEL).toBe('debug');
    });

    it('helm rollback returns to the first revision', async () => {
      ok(['rollback', GUARD, '1', '-n', n]);
      expect(await checksum()).toBe(checksum1);
      expect((await guardDeployment())!.spec.replicas).toBe(2);
      expect((await get<Obj>('v1', 'ConfigMap', n, GUARD))!.data!.REINIT_GUARD_LOG_LEVEL).toBe('info');
      const history = JSON.parse(ok(['history', GUARD, '-n', n, '-o', 'json'])) as Array<{ revision: number; status: string; description: string }>;
      expect(history.map((x) => [x.revision, x.status])).toEqual([[1, 'superseded'], [2, 'superseded'], [3, 'superseded'], [4, 'deployed']]);
      expect(history[3]!.description).toBe('Rollback to 1');
    });

    it('removal (docs/remove.md): routed back to coder, then uninstalled, only the kept Service is left, and the coder release takes it back', async () => {
      ok(['upgrade', GUARD, chart, '-n', n, '--reuse-values', '--set', 'reinitGuard.service.routeTo=coder']);
      expect(await selected(n, (await get<Service>('v1', 'Service', n, 'coder'))!.spec.selector!)).toEqual(['coder']);
      ok(['uninstall', GUARD, '-n', n]);
      // "keep": the Service clients reach coder through outlives the release.
      expect(await inventory(n)).toEqual([...beforeGuard, 'Service/coder'].sort());
      const handBack = await cluster.api('PATCH', `/api/v1/namespaces/${n}/services/coder`, { metadata: { annotations: { 'meta.helm.sh/release-name': 'coder' } } }, 'application/merge-patch+json');
      expect(handBack.status).toBe(200);
      ok(['upgrade', 'coder', coderChart, '-n', n, '--reuse-values', '--set', 'coder.service.enable=true']);
      const svc = (await get<Service>('v1', 'Service', n, 'coder'))!;
      expect(svc.metadata.annotations).toMatchObject({ 'meta.helm.sh/release-name': 'coder' });
      expect(await selected(n, svc.spec.selector!)).toEqual(['coder']);
    });
  });

  describe('ingress', () => {
    const n = ns('ingress');

    it("installs beside coder's Ingress without touching coder's objects, and uninstalls cleanly", async () => {
      await installCoder(n, 'coder.ingress.enable=true', 'coder.ingress.host=coder.example.com', 'coder.ingress.className=nginx');
      const before = await inventory(n);
      const coderIngress = JSON.stringify(await get('networking.k8s.io/v1', 'Ingress', n, 'coder'));
      const out = ok(['install', GUARD, chart, '-n', n, '-f', valuesFile('ingress')]);
      expect(out).toMatch(/only\s+\/api\/v2\/workspaceagents\/me\/reinit to the guard/);

      const ours = (await get<Obj>('networking.k8s.io/v1', 'Ingress', n, GUARD))!;
      const theirs = (await get<Obj>('networking.k8s.io/v1', 'Ingress', n, 'coder'))!;
      const rules = (o: Obj) => o.spec!.rules as Array<{ host: string; http: { paths: Array<{ path: string; pathType: string; backend: { service: { name: string } } }> } }>;
      expect(rules(ours)[0]!.host).toBe(rules(theirs)[0]!.host);
      expect(rules(ours)[0]!.http.paths).toEqual([{ path: '/api/v2/workspaceagents/me/reinit', pathType: 'Exact', backend: { service: { name: GUARD, port: { name: 'http' } } } }]);
      expect(rules(theirs)[0]!.http.paths[0]).toMatchObject({ path: '/', pathType: 'Prefix', backend: { service: { name: 'coder' } } });
      // The guard's backend selects only the guard; the guard forwards to coder's own Service.
      expect(await selected(n, (await get<Service>('v1', 'Service', n, GUARD))!.spec.selector!)).toEqual([GUARD]);
      expect((await get<Obj>('v1', 'ConfigMap', n, GUARD))!.data!.REINIT_GUARD_UPSTREAM).toBe(`http://coder.${n}.svc.cluster.local:80`);
      expect(await selected(n, (await get<Service>('v1', 'Service', n, 'coder'))!.spec.selector!)).toEqual(['coder']);

      ok(['uninstall', GUARD, '-n', n]);
      expect(await inventory(n)).toEqual(before);
      expect(JSON.stringify(await get('networking.k8s.io/v1', 'Ingress', n, 'coder'))).toBe(coderIngress);
    });
  });

  describe('gateway', () => {
    const n = ns('gateway');

    it("installs beside coder's HTTPRoute; by the Gateway API's precedence rules ours serves /reinit, coder's the rest", async () => {
      await installCoder(n, 'coder.httproute.enable=true', 'coder.httproute.host=coder.example.com', 'coder.httproute.parentRefs[0].name=public', 'coder.httproute.parentRefs[0].namespace=gateway-system', 'coder.httproute.parentRefs[0].sectionName=https');
      const before = await inventory(n);
      const out = ok(['install', GUARD, chart, '-n', n, '-f', valuesFile('gateway')]);
      expect(out).toMatch(/sends only\s+\/api\/v2\/workspaceagents\/me\/reinit to the guard/);

      // Both routes as the API server stored them, its CRD defaults applied.
      const ours = (await get<Route & Obj>('gateway.networking.k8s.io/v1', 'HTTPRoute', n, GUARD))!;
      const theirs = (await get<Route & Obj>('gateway.networking.k8s.io/v1', 'HTTPRoute', n, 'coder'))!;
      expect(theirs.spec.rules[0]!.matches).toEqual([{ path: { type: 'PathPrefix', value: '/' } }]); // coder's chart sets none: the CRD default
      expect(ours.spec.rules[0]!.matches).toEqual([{ path: { type: 'Exact', value: '/api/v2/workspaceagents/me/reinit' } }]);
      expect(ours.spec.parentRefs).toEqual(theirs.spec.parentRefs);
      expect(ours.spec.hostnames).toEqual(['coder.example.com']);
      expect(theirs.spec.hostnames).toEqual(['coder.example.com']);
      // Ours is the newer route, so a tie would go to coder's: the Exact match decides first.
      expect(Date.parse(ours.metadata.creationTimestamp)).toBeGreaterThanOrEqual(Date.parse(theirs.metadata.creationTimestamp));
      const routes = [theirs, ours];
      expect(pick(routes, 'coder.example.com', '/api/v2/workspaceagents/me/reinit')).toEqual({ route: `${n}/${GUARD}`, rule: 0 });
      for (const p of ['/api/v2/workspaceagents/me/reinit/', '/api/v2/workspaceagents/me/rpc', '/api/v2/buildinfo', '/']) {
        expect(pick(routes, 'coder.example.com', p), p).toEqual({ route: `${n}/coder`, rule: 0 });
      }
      const backend = (ours.spec.rules[0] as unknown as { backendRefs: Array<{ name: string; port: number }> }).backendRefs;
      const svc = (await get<Service>('v1', 'Service', n, backend[0]!.name))!;
      expect(svc.spec.ports.map((p) => p.port)).toContain(backend[0]!.port);
      expect(await selected(n, svc.spec.selector!)).toEqual([GUARD]);
      expect((await get<Obj>('v1', 'ConfigMap', n, GUARD))!.data!.REINIT_GUARD_UPSTREAM).toBe(`http://coder.${n}.svc.cluster.local:80`);

      ok(['uninstall', GUARD, '-n', n]);
      expect(await inventory(n)).toEqual(before);
    });
  });

  it('NOTES.txt tells the operator the next step, for every scenario', () => {
    for (const scenario of scenarios) {
      const out = ok(['install', GUARD, chart, '-n', 'coder', '--dry-run=client', '-f', valuesFile(scenario)]);
      const notes = out.slice(out.indexOf('NOTES:'));
      expect(notes, scenario).toContain('Next step:');
      const expected = { ingress: /only\s+\/api\/v2\/workspaceagents\/me\/reinit/, gateway: /HTTPRoute coder-reinit-guard for coder\.example\.com sends only/ }[scenario] ?? /coder\.service\.enable=false/;
      expect(notes, scenario).toMatch(expected);
    }
  });

  it('NOTES.txt for a takeover installed as documented (routeTo=coder, observe): clients still on coder, the switch next, the rollback beside it', () => {
    const out = ok(['install', GUARD, chart, '-n', 'coder', '--dry-run=client', '-f', valuesFile('takeover'), '--set', 'reinitGuard.service.routeTo=coder', '--set', 'reinitGuard.mode=observe']);
    const notes = out.slice(out.indexOf('NOTES:'));
    expect(notes).toContain('The guard is installed; clients still reach coder.');
    expect(notes).toContain('Next step: the switch.');
    // Both charts pinned: coder's to the version its release runs, the guard's to this chart's package.
    expect(notes).toContain('\n  helm upgrade coder coder-v2/coder -n coder --version "$(helm get metadata coder -n coder -o json | jq -r .version)" --reuse-values --set coder.service.enable=false\n');
    expect(notes).toContain('\n  helm test coder-reinit-guard -n coder\n  helm upgrade coder-reinit-guard ./coder-reinit-guard-0.1.0.tgz -n coder --reuse-values --set reinitGuard.service.routeTo=guard --wait\n');
    expect(notes).toContain('\n  helm upgrade coder-reinit-guard ./coder-reinit-guard-0.1.0.tgz -n coder --reuse-values --set reinitGuard.service.routeTo=coder --wait\n');
    expect(notes).toContain('\n  helm upgrade coder-reinit-guard ./coder-reinit-guard-0.1.0.tgz -n coder --reuse-values --set reinitGuard.mode=enforce --wait\n');
    expect(notes).not.toContain('Agents now reach the guard');
  });
});
