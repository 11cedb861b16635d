import { cpSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { clusterDir, playKubelet, startCluster, type Cluster } from './cluster.js';
import { chart, helms, manifests, requireTools, scratch, valuesFile, type Obj } from './tools.js';

/**
 * The takeover handover, on a cluster that does what a cluster does with Services: etcd,
 * kube-apiserver and kube-controller-manager (Deployments make ReplicaSets make pods; Services
 * get EndpointSlices), with this test playing the kubelet and the cloud (pods are bound, report
 * running and ready; coder's LoadBalancer has an address). Through the documented order, with
 * each Helm major, coder's own chart and the guard's chart as the docs name it (its package,
 * coder-reinit-guard-<version>.tgz):
 *
 *   1. hand coder's Service to the guard's release (its ownership annotations);
 *   2. `helm install --wait` with service.routeTo=coder (the Service still selects coder);
 *   3. the coder release drops the Service (coder.service.enable=false), pinned as the docs pin
 *      it: `--version` from `helm get metadata coder -o json`;
 *   4. `helm upgrade --wait` with routeTo=guard (the switch); the rollback line (routeTo=coder)
 *      and forward again;
 *   5. removal: routeTo=coder, `helm uninstall`, the Service handed back to the coder release.
 *
 * The EndpointSlices of the Service "coder" are read every 50 ms from before step 1 to after
 * step 5: at every reading the Service exists, is the same object (same UID, cluster IP, load
 * balancer address and node port, which the cloud's load balancer targets) and has at least one
 * ready endpoint.
 */
const GUARD = 'coder-reinit-guard';
const CODER_VERSION = 'v2.34.3';
const LB_ADDRESS = '203.0.113.10';
let cluster: Cluster;
let coderChart: string;
let coderChartVersion: string;
/** The guard's chart as every documented command names it: its package, version in the name. */
let guardPackage: string;
let dir: string;

type Slice = { endpoints?: Array<{ conditions?: { ready?: boolean }; targetRef?: { name: string } }> };
type Service = Obj & { metadata: Obj['metadata'] & { uid: string }; spec: { clusterIP: string; selector?: Record<string, string>; ports?: Array<{ port: number; nodePort?: number }> }; status?: { loadBalancer?: { ingress?: Array<{ ip: string }> } } };

/** One reading of the Service "coder": its identity and the pods of its ready endpoints. */
interface Reading {
  at: number;
  step: string;
  uid: string | null;
  clusterIP: string | null;
  lb: string | null;
  /** The node ports of a LoadBalancer Service, which the cloud's load balancer targets: "80:31234". */
  nodePorts: string | null;
  ready: string[];
}

const CONTROLLERS = ['deployment', 'replicaset', 'endpointslice', 'garbagecollector'];

beforeAll(async () => {
  requireTools('etcd', 'kube-apiserver', 'kube-controller-manager', 'helm3', 'helm4');
  cluster = await startCluster(clusterDir(), { controllers: CONTROLLERS });
  dir = scratch('handover-coder-chart');
  cpSync(path.join(manifests, 'coder'), path.join(dir, 'coder'), { recursive: true });
  cpSync(path.join(manifests, 'libcoder'), path.join(dir, 'libcoder'), { recursive: true });
  coderChart = path.join(dir, 'coder');
  coderChartVersion = (parse(readFileSync(path.join(coderChart, 'Chart.yaml'), 'utf8')) as { version: string }).version;
  helms[0]!.ok(['dependency', 'build', coderChart]);
  const { version } = parse(readFileSync(path.join(chart, 'Chart.yaml'), 'utf8')) as { version: string };
  helms[0]!.ok(['package', chart, '-d', dir]);
  guardPackage = path.join(dir, `coder-reinit-guard-${version}.tgz`);
}, 300_000);

afterAll(async () => {
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const merge = (p: string, body: unknown) => cluster.api('PATCH', p, body, 'application/merge-patch+json');

describe.each(helms)('takeover handover with $name: coder never without a ready endpoint', (helm) => {
  const n = `handover-${helm.name}`;
  /** Helm without blocking: the readings and the kubelet this test plays go on meanwhile. */
  const h = async (args: string[]) => {
    const r = await helm.start(args, cluster.kubeconfig);
    if (r.status !== 0) throw new Error(`${helm.name} ${args.join(' ')} exited ${r.status}:\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const svcPath = `/api/v1/namespaces/${n}/services/coder`;
  const readings: Reading[] = [];
  let step = 'coder alone';
  let watching = true;
  let watcher: Promise<void>;
  let kubelet: { stop(): Promise<void> };

  const read = async (): Promise<Reading> => {
    const [svc, slices] = await Promise.all([
      cluster.api<Service>('GET', svcPath),
      cluster.api<{ items: Slice[] }>('GET', `/apis/discovery.k8s.io/v1/namespaces/${n}/endpointslices?labelSelector=kubernetes.io/service-name%3Dcoder`),
    ]);
    const s = svc.status === 200 ? svc.body : null;
    const ready = (slices.body.items ?? []).flatMap((sl) => sl.endpoints ?? []).filter((e) => e.conditions?.ready).map((e) => e.targetRef?.name ?? '?');
    return { at: Date.now(), step, uid: s?.metadata.uid ?? null, clusterIP: s?.spec.clusterIP ?? null, lb: s?.status?.loadBalancer?.ingress?.[0]?.ip ?? null, nodePorts: s?.spec.ports?.map((p) => `${p.port}:${p.nodePort}`).join(',') ?? null, ready: ready.sort() };
  };
  /**
   * The documented pin of coder's chart: `--version "$(helm get metadata coder -n <ns> -o json | jq -r .version)"`.
   * (With the chart from a directory Helm would not need it; the point is that each Helm major
   * answers the documented command with the chart version the release runs.)
   */
  const coderPin = async () => {
    const meta = JSON.parse(await h(['get', 'metadata', 'coder', '-n', n, '-o', 'json'])) as { version?: string };
    expect(meta.version).toBe(coderChartVersion);
    return ['--version', meta.version!];
  };
  /** Waits until the Service's ready endpoints are pods of `release` only. */
  const routedTo = async (release: string) =>
    expect.poll(async () => (await read()).ready.map((pod) => pod.startsWith(`${release}-`) && !(release === 'coder' && pod.startsWith(GUARD))), { timeout: 60_000, interval: 100 }).toSatisfy((xs: boolean[]) => xs.length > 0 && xs.every(Boolean));

  it("coder's chart serves through its own Service, load balancer address assigned", async () => {
    expect((await cluster.api('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: n } })).status).toBe(201);
    await cluster.api('POST', `/api/v1/namespaces/${n}/secrets`, { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'coder-db-url' }, stringData: { url: 'postgres://coder:pw@postgres:5432/coder?sslmode=disable' } });
    kubelet = await playKubelet(cluster, n);
    await h(['install', 'coder', coderChart, '-n', n, '--set', `coder.image.tag=${CODER_VERSION}`, '--set-string', 'coder.service.annotations.service\\.beta\\.kubernetes\\.io/aws-load-balancer-internal=true', '--set', 'coder.service.loadBalancerIP=10.0.0.42']);
    // The cloud's load balancer controller: the address the agents' DNS name points at.
    expect((await merge(`${svcPath}/status`, { status: { loadBalancer: { ingress: [{ ip: LB_ADDRESS }] } } })).status).toBe(200);
    await routedTo('coder');
    watcher = (async () => {
      while (watching) {
        readings.push(await read());
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
  });

  it('1-2: the Service handed to the guard release; helm install --wait with routeTo=coder changes no route', async () => {
    step = 'hand over';
    expect((await merge(svcPath, { metadata: { annotations: { 'meta.helm.sh/release-name': GUARD, 'meta.helm.sh/release-namespace': n } } })).status).toBe(200);
    step = 'install routeTo=coder';
    await h(['install', GUARD, guardPackage, '-n', n, '-f', valuesFile('takeover'), '--set', 'reinitGuard.service.routeTo=coder', '--wait', '--timeout', '120s']);
    const svc = (await cluster.api<Service>('GET', svcPath)).body;
    expect(svc.metadata.annotations).toMatchObject({ 'meta.helm.sh/release-name': GUARD, 'helm.sh/resource-policy': 'keep' });
    expect(svc.spec.selector).toEqual({ 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' });
    expect((await read()).ready.every((p) => p.startsWith('coder-') && !p.startsWith(GUARD))).toBe(true);
  });

  it("3: the coder release drops the Service from its manifest (pinned chart); \"keep\" leaves it in place", async () => {
    step = 'coder.service.enable=false';
    await h(['upgrade', 'coder', coderChart, '-n', n, ...(await coderPin()), '--reuse-values', '--set', 'coder.service.enable=false']);
    expect((await cluster.api('GET', svcPath)).status).toBe(200);
  });

  it('4: helm upgrade --wait with routeTo=guard switches it to the ready guard; the rollback line switches back', async () => {
    step = 'switch to guard';
    await h(['upgrade', GUARD, guardPackage, '-n', n, '--reuse-values', '--set', 'reinitGuard.service.routeTo=guard', '--wait', '--timeout', '120s']);
    await routedTo(GUARD);
    step = 'rollback line';
    await h(['upgrade', GUARD, guardPackage, '-n', n, '--reuse-values', '--set', 'reinitGuard.service.routeTo=coder', '--wait', '--timeout', '120s']);
    await routedTo('coder');
    step = 'forward again';
    await h(['upgrade', GUARD, guardPackage, '-n', n, '--reuse-values', '--set', 'reinitGuard.service.routeTo=guard', '--wait', '--timeout', '120s']);
    await routedTo(GUARD);
  });

  it('5: removal: route to coder, uninstall the guard, hand the Service back to the coder release', async () => {
    step = 'remove: routeTo=coder';
    await h(['upgrade', GUARD, guardPackage, '-n', n, '--reuse-values', '--set', 'reinitGuard.service.routeTo=coder', '--wait', '--timeout', '120s']);
    await routedTo('coder');
    step = 'remove: uninstall';
    await h(['uninstall', GUARD, '-n', n, '--wait', '--timeout', '120s']);
    expect((await cluster.api('GET', svcPath)).status).toBe(200);
    step = 'remove: back to coder';
    expect((await merge(svcPath, { metadata: { annotations: { 'meta.helm.sh/release-name': 'coder' } } })).status).toBe(200);
    await h(['upgrade', 'coder', coderChart, '-n', n, ...(await coderPin()), '--reuse-values', '--set', 'coder.service.enable=true']);
    // Helm 3's client-side merge leaves the guard's "keep" on the Service (Helm 4's server-side
    // apply drops it): the last step of docs/remove.md removes it, so that uninstalling coder
    // one day deletes its Service as before.
    expect((await merge(svcPath, { metadata: { annotations: { 'helm.sh/resource-policy': null } } })).status).toBe(200);
    const svc = (await cluster.api<Service>('GET', svcPath)).body;
    expect(svc.metadata.annotations).toMatchObject({ 'meta.helm.sh/release-name': 'coder' });
    expect(svc.metadata.annotations).not.toHaveProperty(['helm.sh/resource-policy']);
    expect(svc.spec.selector).toEqual({ 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' });
    await routedTo('coder');
    // A moment more of readings after the last step.
    await new Promise((r) => setTimeout(r, 500));
    watching = false;
    await watcher;
    await kubelet.stop();
  });

  it('at every reading, from before the handover to after the removal: the same Service, with a ready endpoint', () => {
    expect(readings.length).toBeGreaterThan(20);
    const first = readings[0]!;
    expect(first.uid).not.toBeNull();
    expect(first.lb).toBe(LB_ADDRESS);
    expect(first.nodePorts).toMatch(/^80:\d+$/);
    const bad = readings.filter((r) => r.uid !== first.uid || r.clusterIP !== first.clusterIP || r.lb !== first.lb || r.nodePorts !== first.nodePorts || r.ready.length === 0);
    expect(bad, `readings without a ready endpoint or with another Service (of ${readings.length})`).toEqual([]);
    // Both sides were seen serving: the test watched a real switch, not a Service that never moved.
    expect(readings.some((r) => r.ready.some((p) => p.startsWith(GUARD)))).toBe(true);
    expect(new Set(readings.map((r) => r.step)).size).toBeGreaterThanOrEqual(6);
  });
});
