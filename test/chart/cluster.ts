import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { bin } from './tools.js';

/**
 * A Kubernetes API server with nothing else: etcd and kube-apiserver (built from their modules
 * by tools/build.sh) on loopback, random ports. No kubelet, scheduler or controller manager, so
 * no pod ever runs; everything an API server does itself (validation, defaulting, admission,
 * CRDs, server-side dry run) is real.
 *
 * Authentication is a static token in group system:masters; authorization AlwaysAllow. The
 * service-account signing key is generated per run; the serving certificate is the one
 * kube-apiserver generates for itself in --cert-dir, trusted by the kubeconfig.
 */
export interface Cluster {
  /** A kubeconfig for Helm. */
  kubeconfig: string;
  /** One API request; `body` is sent as JSON (or YAML with contentType). */
  api<T = unknown>(method: string, path: string, body?: unknown, contentType?: string): Promise<{ status: number; body: T }>;
  /** How long etcd and kube-apiserver took to answer /readyz. */
  startMs: number;
  stop(): Promise<void>;
}

/** A free TCP port on loopback (the kernel picks it; a race with another taker is retried by the caller). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

function start(file: string, args: string[], log: string): ChildProcess {
  const fd = openSync(log, 'a');
  return spawn(file, args, { stdio: ['ignore', fd, fd] });
}

const tail = (file: string) => readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((resolve) => p.once('exit', resolve));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

/**
 * Starts etcd and kube-apiserver; with `controllers`, kube-controller-manager too, running
 * just those controllers (e.g. deployment, replicaset, endpointslice, garbagecollector), so
 * that Deployments make pods and Services get EndpointSlices. Pods still never run: see
 * {@link playKubelet}.
 */
export async function startCluster(dir: string, opts: { controllers?: string[] } = {}): Promise<Cluster> {
  const started = Date.now();
  mkdirSync(dir, { recursive: true });
  const [etcdClient, etcdPeer, apiPort] = [await freePort(), await freePort(), await freePort()];

  const etcdLog = path.join(dir, 'etcd.log');
  const etcd = start(path.join(bin, 'etcd'), [
    '--name=test',
    `--data-dir=${path.join(dir, 'etcd')}`,
    `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
    `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
    `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-cluster=test=http://127.0.0.1:${etcdPeer}`,
    // A throwaway store: durability buys nothing here.
    '--unsafe-no-fsync',
    '--log-level=warn',
  ], etcdLog);

  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  writeFileSync(path.join(dir, 'sa.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  writeFileSync(path.join(dir, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
  const token = randomBytes(24).toString('hex');
  writeFileSync(path.join(dir, 'tokens.csv'), `${token},admin,admin,"system:masters"\n`, { mode: 0o600 });

  const apiLog = path.join(dir, 'kube-apiserver.log');
  const apiserver = start(path.join(bin, 'kube-apiserver'), [
    `--etcd-servers=http://127.0.0.1:${etcdClient}`,
    '--bind-address=127.0.0.1',
    '--advertise-address=127.0.0.1',
    // The "kubernetes" Service's endpoints would point at a loopback address, which the
    // reconciler refuses; nothing here needs them.
    '--endpoint-reconciler-type=none',
    `--secure-port=${apiPort}`,
    `--cert-dir=${path.join(dir, 'certs')}`,
    `--token-auth-file=${path.join(dir, 'tokens.csv')}`,
    '--authorization-mode=AlwaysAllow',
    '--anonymous-auth=false',
    `--service-account-key-file=${path.join(dir, 'sa.pub')}`,
    `--service-account-signing-key-file=${path.join(dir, 'sa.key')}`,
    '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
    '--service-cluster-ip-range=10.96.0.0/16',
    // Admission: the server's default plugins, as a cluster runs them. None needs another
    // component or the network (the webhook plugins call out only for registered webhooks).
    '--enable-priority-and-fairness=false',
    '--profiling=false',
    '--v=1',
  ], apiLog);

  let controllerManager: ChildProcess | undefined;
  const stop = async () => {
    if (controllerManager) await stopProcess(controllerManager);
    await stopProcess(apiserver);
    await stopProcess(etcd);
  };

  const certFile = path.join(dir, 'certs/apiserver.crt');
  const kubeconfig = path.join(dir, 'kubeconfig');
  let ca: string | undefined;
  let agent: https.Agent | undefined;
  const api: Cluster['api'] = (method, p, body, contentType = 'application/json') =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
      const req = https.request(
        { host: '127.0.0.1', port: apiPort, method, path: p, agent, headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(payload ? { 'content-type': contentType } : {}) } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = JSON.parse(text);
            } catch {
              // not JSON (e.g. /readyz): keep the text
            }
            resolve({ status: res.statusCode ?? 0, body: parsed as never });
          });
        },
      );
      req.on('error', reject);
      req.end(payload);
    });

  // Wait for /readyz: etcd up, the server's certificate written, its post-start hooks done.
  const deadline = Date.now() + 180_000;
  for (;;) {
    if (etcd.exitCode !== null) throw new Error(`etcd exited ${etcd.exitCode}:\n${tail(etcdLog)}`);
    if (apiserver.exitCode !== null) {
      await stop();
      throw new Error(`kube-apiserver exited ${apiserver.exitCode}:\n${tail(apiLog)}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`kube-apiserver not ready after 180 s:\n${tail(apiLog)}`);
    }
    if (!agent) {
      try {
        ca = readFileSync(certFile, 'utf8');
        agent = new https.Agent({ ca, keepAlive: true });
      } catch {
        await sleep(250);
        continue;
      }
    }
    const r = await api('GET', '/readyz').catch(() => undefined);
    if (r?.status === 200) break;
    await sleep(250);
  }

  writeFileSync(
    kubeconfig,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'test', cluster: { server: `https://127.0.0.1:${apiPort}`, 'certificate-authority-data': Buffer.from(ca!).toString('base64') } }],
      users: [{ name: 'admin', user: { token } }],
      contexts: [{ name: 'test', context: { cluster: 'test', user: 'admin' } }],
      'current-context': 'test',
    }),
    { mode: 0o600 },
  );

  if (opts.controllers?.length) {
    const cmLog = path.join(dir, 'kube-controller-manager.log');
    controllerManager = start(path.join(bin, 'kube-controller-manager'), [
      `--kubeconfig=${kubeconfig}`,
      `--controllers=${opts.controllers.join(',')}`,
      '--leader-elect=false',
      // No serving endpoint: nothing scrapes or probes it here.
      '--secure-port=0',
      '--v=1',
    ], cmLog);
    // Ready once its controllers write: wait for the Endpoints/EndpointSlice of the
    // "kubernetes" Service? It has none here (--endpoint-reconciler-type=none); the process
    // staying up for a moment is the check, and each test waits for what it needs.
    await sleep(1000);
    if (controllerManager.exitCode !== null) {
      await stop();
      throw new Error(`kube-controller-manager exited ${controllerManager.exitCode}:\n${tail(cmLog)}`);
    }
  }

  return {
    kubeconfig,
    api,
    startMs: Date.now() - started,
    stop: async () => {
      agent?.destroy();
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A scratch directory for one cluster (outside the repository: etcd writes a lot). */
export const clusterDir = () => path.join(os.tmpdir(), `chart-cluster-${process.pid}-${Date.now()}`);

type PodLike = {
  metadata: { name: string; deletionTimestamp?: string };
  spec: { nodeName?: string; containers: Array<{ name: string; image: string }> };
  status?: { conditions?: Array<{ type: string; status: string }> };
};

/**
 * Plays the kubelet (and the scheduler) for one namespace, as far as the API sees them: binds
 * every new pod to a Node "fake-node", reports it running and ready with a pod IP of its own,
 * and removes a pod being deleted. Every `intervalMs`, until stopped.
 */
export async function playKubelet(cluster: Cluster, ns: string, intervalMs = 100): Promise<{ stop(): Promise<void> }> {
  const node = await cluster.api('POST', '/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'fake-node' } });
  if (node.status !== 201 && node.status !== 409) throw new Error(`creating the Node: ${node.status}`);
  const ips = new Map<string, string>();
  let running = true;
  const loop = (async () => {
    while (running) {
      const pods = await cluster.api<{ items?: PodLike[] }>('GET', `/api/v1/namespaces/${ns}/pods`);
      for (const pod of pods.body.items ?? []) {
        const name = pod.metadata.name;
        const base = `/api/v1/namespaces/${ns}/pods/${name}`;
        if (pod.metadata.deletionTimestamp) {
          await cluster.api('DELETE', base, { apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: 0 });
        } else if (!pod.spec.nodeName) {
          await cluster.api('POST', `${base}/binding`, { apiVersion: 'v1', kind: 'Binding', metadata: { name }, target: { apiVersion: 'v1', kind: 'Node', name: 'fake-node' } });
        } else if (!pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) {
          if (!ips.has(name)) ips.set(name, `10.244.${Math.floor(ips.size / 250)}.${(ips.size % 250) + 2}`);
          const ip = ips.get(name) as string;
          const now = new Date().toISOString();
          const condition = (type: string) => ({ type, status: 'True', lastTransitionTime: now });
          await cluster.api('PATCH', `${base}/status`, {
            status: {
              phase: 'Running',
              hostIP: '127.0.0.1',
              podIP: ip,
              podIPs: [{ ip }],
              startTime: now,
              conditions: ['PodScheduled', 'Initialized', 'ContainersReady', 'Ready'].map(condition),
              containerStatuses: pod.spec.containers.map((c) => ({ name: c.name, image: c.image, imageID: '', ready: true, started: true, restartCount: 0, state: { running: { startedAt: now } } })),
            },
          }, 'application/merge-patch+json');
        }
      }
      await sleep(intervalMs);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}
