import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { chart, goldenDir, helms, objects, requireTools, run, scenarios, scratch, valuesFile, type Obj } from './tools.js';

/**
 * The chart meets real Helm, both majors (built from their modules by tools/build.sh):
 * `helm lint --strict`, `helm template` against the golden files (UPDATE_GOLDEN=1 rewrites them
 * from Helm's own output), the values schema and the chart's own checks as Helm enforces them,
 * and `helm package`. Objects meeting the API server: install.test.ts.
 */
const release = 'coder-reinit-guard';
const template = (h: (typeof helms)[number], ...args: string[]) => h.run(['template', release, chart, '-n', 'coder', ...args]);

/**
 * The golden files hold Helm 3's bytes. Helm 4 prints the same bytes plus one blank line ending
 * each document (the last one too when it is a hook, such as the `helm test` Pod, which Helm
 * prints after the manifests): that one difference is taken out, nothing else.
 */
const asHelm3 = (h: (typeof helms)[number], text: string) => (h.name === 'helm4' ? text.replace(/\n\n(?=---\n)|\n\n$/g, '\n') : text);

beforeAll(() => requireTools('helm3', 'helm4'));

describe.each(helms)('$name', (helm) => {
  describe.each(scenarios)('scenario %s', (scenario) => {
    it('passes helm lint --strict', () => {
      const out = helm.ok(['lint', '--strict', chart, '-f', valuesFile(scenario)]);
      expect(out).toContain('1 chart(s) linted, 0 chart(s) failed');
      expect(out).not.toMatch(/\[(WARNING|ERROR)\]/);
    });

    it('renders exactly the golden file', () => {
      const r = template(helm, '-f', valuesFile(scenario));
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const file = path.join(goldenDir, `${scenario}.yaml`);
      // Helm 3 writes; Helm 4 must then agree with it.
      if (process.env.UPDATE_GOLDEN && helm.name === 'helm3') writeFileSync(file, r.stdout);
      expect(existsSync(file), `${file} is missing: run UPDATE_GOLDEN=1 npm run test:chart and review it`).toBe(true);
      expect(asHelm3(helm, r.stdout)).toBe(readFileSync(file, 'utf8'));
    });

    it("labels follow Coder's chart; selectors are exactly name and instance", () => {
      for (const o of objects(template(helm, '-f', valuesFile(scenario)).stdout)) {
        expect(o.metadata.labels, `${o.kind}/${o.metadata.name}`).toMatchObject({
          'app.kubernetes.io/name': 'coder-reinit-guard',
          'app.kubernetes.io/instance': release,
          'app.kubernetes.io/part-of': 'coder',
          'app.kubernetes.io/managed-by': 'Helm',
          'helm.sh/chart': 'coder-reinit-guard-0.1.0',
        });
        if (o.kind === 'Deployment') {
          expect(o.spec!.selector).toEqual({ matchLabels: { 'app.kubernetes.io/name': 'coder-reinit-guard', 'app.kubernetes.io/instance': release } });
        }
      }
    });
  });

  it('every scenario has a golden file and every golden file a scenario', () => {
    expect(readdirSync(goldenDir).map((f) => f.replace(/\.yaml$/, '')).sort()).toEqual(scenarios);
  });

  describe('the values schema, enforced by Helm with its own message', () => {
    const schemaError = "Error: values don't meet the specifications of the schema(s) in the following chart(s):\ncoder-reinit-guard:\n";
    it.each([
      [['reinitGuard.topology=sidecar'], "- at '/reinitGuard/topology': value must be one of 'takeover', 'ingress', 'gateway'"],
      [['reinitGuard.mode=on'], "- at '/reinitGuard/mode': value must be one of 'enforce', 'observe', 'off', false"],
      [['reinitGuard.sevice.type=NodePort'], "- at '/reinitGuard': additional properties 'sevice' not allowed"],
      [['reinitGuard.workers=0'], "- at '/reinitGuard/workers': minimum: got 0, want 1"],
      [['reinitGuard.dbTimeout=5'], "- at '/reinitGuard/dbTimeout': got number, want string"],
      [['reinitGuard.service.type=ExternalName'], "- at '/reinitGuard/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'"],
      [['reinitGuard.gateway.parentRefs[0].nam=public'], "- at '/reinitGuard/gateway/parentRefs/0': missing property 'name'"],
      [['reinitGuard.prometheusRule.enable=yes'], "- at '/reinitGuard/prometheusRule/enable': got string, want boolean"],
      [['reinitGuard.prometheusRule.alerts.CoderReinitGuardNoSuchAlert.enable=false'], "- at '/reinitGuard/prometheusRule/alerts': additional properties 'CoderReinitGuardNoSuchAlert' not allowed"],
      [['reinitGuard.db.sslmode=verify-ca'], "- at '/reinitGuard/db/sslmode': value must be one of '', 'disable', 'allow', 'prefer', 'require', 'verify-full'"],
      [['reinitGuard.image.digest=latest'], "- at '/reinitGuard/image/digest': 'latest' does not match pattern"],
      [['reinitGuard.serviceAccount.automount=true'], "- at '/reinitGuard/serviceAccount': additional properties 'automount' not allowed"],
      [['tests.enabled=false'], "- at '/tests': additional properties 'enabled' not allowed"],
    ])('--set %j is refused', (sets, message) => {
      const r = template(helm, ...sets.flatMap((s) => ['--set', s]));
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain(schemaError);
      expect(r.stderr).toContain(message);
    });

    it('the defaults pass it (every scenario does, above)', () => {
      expect(template(helm).status).toBe(0);
    });
  });

  describe("the chart's own checks: values that must agree with each other fail with what to set", () => {
    it.each([
      [['reinitGuard.topology=ingress'], 'reinitGuard.ingress.host is required with topology ingress'],
      [['reinitGuard.topology=gateway', 'reinitGuard.gateway.hostnames[0]=coder.example.com'], 'reinitGuard.gateway.parentRefs is required with topology gateway'],
      [['reinitGuard.topology=gateway', 'reinitGuard.gateway.parentRefs[0].name=public'], 'reinitGuard.gateway.hostnames is required with topology gateway'],
      [['reinitGuard.tls.enable=true'], 'reinitGuard.tls.secretName is required when reinitGuard.tls.enable is true'],
      [['reinitGuard.db.host=db', 'reinitGuard.db.user=guard'], 'reinitGuard.db.existingSecret is required with reinitGuard.db.host'],
      [['reinitGuard.db.host=db', 'reinitGuard.db.existingSecret=pw'], 'reinitGuard.db.user is required with reinitGuard.db.host'],
      [['reinitGuard.topology=ingress', 'reinitGuard.ingress.host=coder.example.com', 'reinitGuard.ingress.tls.enable=true'], 'reinitGuard.ingress.tls.secretName is required when reinitGuard.ingress.tls.enable is true'],
    ])('--set %j', (sets, message) => {
      const r = template(helm, ...sets.flatMap((s) => ['--set', s]));
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/^Error: execution error at \(coder-reinit-guard\/templates\/[a-z-]+\.yaml:\d+:\d+\): /);
      expect(r.stderr).toContain(message);
    });
  });

  it('renders as a subchart of a parent chart that sets global values (helm/helm#10392)', () => {
    const dir = scratch(`${helm.name}-parent`);
    try {
      mkdirSync(path.join(dir, 'parent/charts'), { recursive: true });
      cpSync(chart, path.join(dir, 'parent/charts/coder-reinit-guard'), { recursive: true });
      writeFileSync(
        path.join(dir, 'parent/Chart.yaml'),
        ['apiVersion: v2', 'name: parent', 'version: 1.0.0', 'dependencies:', '  - name: coder-reinit-guard', '    version: 0.1.0', ''].join('\n'),
      );
      writeFileSync(
        path.join(dir, 'parent/values.yaml'),
        ['global:', '  imageRegistry: registry.example.com', '  storageClass: fast', 'coder-reinit-guard:', '  reinitGuard:', '    mode: observe', ''].join('\n'),
      );
      const r = helm.run(['template', 'platform', path.join(dir, 'parent'), '-n', 'coder', '--set', 'global.labels.team=platform']);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const o = objects(r.stdout);
      const cm = o.find((x) => x.kind === 'ConfigMap' && x.metadata.name === 'platform-coder-reinit-guard')!;
      expect(cm.data!.REINIT_GUARD_MODE).toBe('observe');
      expect(o.find((x) => x.kind === 'Deployment')!.metadata.labels).toMatchObject({ 'app.kubernetes.io/instance': 'platform' });
      // The subchart's own checks still hold it.
      const bad = helm.run(['template', 'platform', path.join(dir, 'parent'), '-n', 'coder', '--set', 'coder-reinit-guard.reinitGuard.sevice.type=NodePort']);
      expect(bad.status).toBe(1);
      expect(bad.stderr).toContain("additional properties 'sevice' not allowed");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('packages the chart, and the package renders as the chart does', () => {
    const dir = scratch(`${helm.name}-package`);
    try {
      expect(helm.ok(['package', chart, '-d', dir])).toContain(`Successfully packaged chart and saved it to: ${dir}/coder-reinit-guard-0.1.0.tgz`);
      const tgz = path.join(dir, 'coder-reinit-guard-0.1.0.tgz');
      helm.ok(['lint', '--strict', tgz]);
      // The full scenario reads the dashboard and the alert rules with .Files.Get: the package carries them.
      const r = helm.run(['template', release, tgz, '-n', 'coder', '-f', valuesFile('full')]);
      expect(asHelm3(helm, r.stdout)).toBe(readFileSync(path.join(goldenDir, 'full.yaml'), 'utf8'));
      expect(parse(helm.ok(['show', 'chart', tgz]))).toMatchObject({ name: 'coder-reinit-guard', version: '0.1.0', appVersion: '0.1.0' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('topology-specific objects (helm3 output; helm4 renders the same golden files)', () => {
  const objs = (scenario: string): Obj[] => objects(readFileSync(path.join(goldenDir, `${scenario}.yaml`), 'utf8'));
  const configMap = (o: Obj[]) => o.find((x) => x.kind === 'ConfigMap' && x.metadata.name === release)!.data!;

  it('takeover: a Service named coder selects the guard; the upstream selects the coder pods', () => {
    const o = objs('takeover');
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect(coder.spec).toMatchObject({ type: 'LoadBalancer', loadBalancerIP: '10.0.0.42', selector: { 'app.kubernetes.io/name': 'coder-reinit-guard' } });
    expect((coder.spec!.ports as Array<{ port: number }>)[0]!.port).toBe(80);
    const up = o.find((x) => x.metadata.name === 'coder-upstream')!;
    expect(up.spec).toMatchObject({ selector: { 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' } });
    expect(configMap(o).REINIT_GUARD_UPSTREAM).toBe('http://coder-upstream.coder.svc.cluster.local:80');
  });

  it('takeover by default: the Service coder still selects the coder pods, so an install alone moves no client', () => {
    const o = objects(helms[0]!.ok(['template', release, chart, '-n', 'coder']));
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect(coder.spec!.selector).toEqual({ 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' });
  });

  it('rollouts: never below the desired ready replicas, and a grace period that covers the shutdown delay and drain', () => {
    const o = objs('takeover');
    const deployment = o.find((x) => x.kind === 'Deployment')!;
    const spec = deployment.spec as { strategy: unknown; template: { spec: { terminationGracePeriodSeconds: number } } };
    expect(spec.strategy).toMatchObject({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0 } });
    const cm = configMap(o);
    expect(cm.REINIT_GUARD_SHUTDOWN_DELAY).toBe('10s');
    expect(cm.REINIT_GUARD_SHUTDOWN_GRACE).toBe('10s');
    // The guard keeps serving for the delay, then drains for the grace period: both, and a margin.
    expect(spec.template.spec.terminationGracePeriodSeconds).toBe(10 + 10 + 15);
    // Retirement is on by default (the first release proven fixed).
    expect(cm.REINIT_GUARD_RETIRE_AT).toBe('>=2.35.1');
  });

  it('tls: the coder Service serves 443 from the guard, which reaches coder over https', () => {
    const o = objs('tls');
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect((coder.spec!.ports as Array<{ name: string; port: number }>).map((p) => [p.name, p.port])).toEqual([['http', 80], ['https', 443]]);
    expect(configMap(o)).toMatchObject({
      REINIT_GUARD_UPSTREAM: 'https://coder-upstream.coder.svc.cluster.local:443',
      REINIT_GUARD_TLS_LISTEN: '0.0.0.0:8443',
      REINIT_GUARD_UPSTREAM_SERVERNAME: 'coder.example.com',
      REINIT_GUARD_UPSTREAM_CA_FILE: '/etc/coder-reinit-guard/upstream-ca/ca.crt',
    });
  });

  it('ingress: only the Exact /reinit path goes to the guard, which forwards to the coder Service', () => {
    const o = objs('ingress');
    expect(o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')).toBeUndefined();
    const ing = o.find((x) => x.kind === 'Ingress')!;
    expect(ing.spec!.rules).toEqual([
      { host: 'coder.example.com', http: { paths: [{ path: '/api/v2/workspaceagents/me/reinit', pathType: 'Exact', backend: { service: { name: release, port: { name: 'http' } } } }] } },
    ]);
    expect(configMap(o).REINIT_GUARD_UPSTREAM).toBe('http://coder.coder.svc.cluster.local:80');
  });

  it("gateway: an HTTPRoute on coder's Gateway and host sends only the Exact /reinit path to the guard", () => {
    const o = objs('gateway');
    expect(o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')).toBeUndefined();
    expect(o.find((x) => x.kind === 'Ingress')).toBeUndefined();
    const route = o.find((x) => x.kind === 'HTTPRoute')!;
    expect(route.apiVersion).toBe('gateway.networking.k8s.io/v1');
    expect(route.spec).toEqual({
      parentRefs: [{ name: 'public', namespace: 'gateway-system', sectionName: 'https' }],
      hostnames: ['coder.example.com'],
      rules: [{ matches: [{ path: { type: 'Exact', value: '/api/v2/workspaceagents/me/reinit' } }], backendRefs: [{ name: release, port: 80 }] }],
    });
    // Port 80 of the guard's own Service is its proxy port.
    const svc = o.find((x) => x.kind === 'Service' && x.metadata.name === release)!;
    expect(svc.spec!.ports).toContainEqual({ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' });
    expect(configMap(o).REINIT_GUARD_UPSTREAM).toBe('http://coder.coder.svc.cluster.local:80');
  });

  it('full: the PrometheusRule ships rules/alerts.yaml as it is (the file promtool tests)', () => {
    const rule = objs('full').find((x) => x.kind === 'PrometheusRule')!;
    expect(rule.metadata.labels).toMatchObject({ release: 'prometheus' });
    expect(rule.spec).toEqual(parse(readFileSync(path.join(chart, 'rules/alerts.yaml'), 'utf8')));
    expect(objs('takeover').find((x) => x.kind === 'PrometheusRule')).toBeUndefined();
  });
});

describe('the conventions operators know (scenario conventions, helm3 output; helm4 renders the same)', () => {
  const o = objects(readFileSync(path.join(goldenDir, 'conventions.yaml'), 'utf8'));
  const deployment = o.find((x) => x.kind === 'Deployment')!;
  type Container = { image: string; env: Array<{ name: string; value?: string; valueFrom?: unknown }>; [k: string]: unknown };
  const pod = (deployment.spec as { template: { metadata: { labels: Record<string, string> }; spec: Record<string, unknown> & { containers: Container[] } } }).template;
  const guard = pod.spec.containers[0]!;

  it('fullnameOverride names the objects; commonLabels reach every object the chart creates, podLabels the pods only', () => {
    expect(deployment.metadata.name).toBe('reinit-guard');
    for (const x of o.filter((x) => !x.metadata.name.endsWith('-extra') && x.metadata.name !== 'coder' && x.metadata.name !== 'coder-upstream')) {
      expect(x.metadata.name, `${x.kind}`).toMatch(/^reinit-guard/);
    }
    for (const x of o.filter((x) => !x.metadata.name.endsWith('-extra') || x.kind === 'ConfigMap')) {
      expect(x.metadata.labels, `${x.kind}/${x.metadata.name}`).toMatchObject({ team: 'platform' });
    }
    expect(pod.metadata.labels).toMatchObject({ team: 'platform', 'cost-center': '42' });
    expect(deployment.metadata.labels!['cost-center']).toBeUndefined();
  });

  it('image.digest pins the image; the ServiceAccount is the chart\'s, with no token', () => {
    expect(guard.image).toBe('ghcr.io/coder-reinit-guard/coder-reinit-guard@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef');
    expect(pod.spec).toMatchObject({ serviceAccountName: 'reinit-guard-sa', automountServiceAccountToken: false, priorityClassName: 'system-cluster-critical' });
    const sa = o.find((x) => x.kind === 'ServiceAccount')!;
    expect(sa).toMatchObject({ metadata: { name: 'reinit-guard-sa', annotations: { 'eks.amazonaws.com/role-arn': expect.any(String) } }, automountServiceAccountToken: false });
  });

  it('the database as separate keys: PG* variables and the password from a Secret key, no URL', () => {
    const env = Object.fromEntries(guard.env.map((e) => [e.name, e.value ?? e.valueFrom]));
    expect(env).toMatchObject({
      PGHOST: 'postgres.databases.svc.cluster.local',
      PGPORT: '6432',
      PGDATABASE: 'coder',
      PGUSER: 'reinit_guard',
      PGSSLMODE: 'verify-full',
      PGPASSWORD: { secretKeyRef: { name: 'reinit-guard-db', key: 'pw', optional: false } },
      REINIT_GUARD_PEEK_TIMEOUT: '3s',
    });
    expect(env.REINIT_GUARD_PG_URL).toBeUndefined();
    // The default stays the URL Secret.
    const takeover = objects(readFileSync(path.join(goldenDir, 'takeover.yaml'), 'utf8')).find((x) => x.kind === 'Deployment')!;
    expect(JSON.stringify(takeover)).toContain('"name":"REINIT_GUARD_PG_URL"');
    expect(JSON.stringify(takeover)).not.toContain('PGHOST');
  });

  it('probes are merged over the defaults; lifecycle, volumes, envFrom and topologySpreadConstraints as given', () => {
    expect(guard.readinessProbe).toEqual({ httpGet: { path: '/readyz', port: 'admin' }, periodSeconds: 3, failureThreshold: 2, timeoutSeconds: 3 });
    expect(guard.livenessProbe).toEqual({ httpGet: { path: '/healthz', port: 'admin' }, periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 5 });
    expect(guard.startupProbe).toMatchObject({ httpGet: { path: '/healthz', port: 'admin' }, failureThreshold: 60 });
    expect(guard.lifecycle).toEqual({ preStop: { sleep: { seconds: 2 } } });
    expect(guard.volumeMounts).toEqual([{ name: 'scratch', mountPath: '/scratch' }]);
    expect(pod.spec.volumes).toEqual([{ name: 'scratch', emptyDir: { sizeLimit: '16Mi' } }]);
    expect(guard.envFrom).toEqual([{ configMapRef: { name: 'reinit-guard' } }, { secretRef: { name: 'reinit-guard-extra-env', optional: true } }]);
    expect(pod.spec.topologySpreadConstraints).toHaveLength(1);
    expect((pod.spec.topologySpreadConstraints as Array<{ whenUnsatisfiable: string }>)[0]!.whenUnsatisfiable).toBe('DoNotSchedule');
  });

  it('extraObjects are rendered through tpl, strings and maps alike', () => {
    expect(o.find((x) => x.kind === 'ConfigMap' && x.metadata.name === 'reinit-guard-extra')!.data).toEqual({ release: 'coder-reinit-guard' });
    expect(o.find((x) => x.kind === 'Secret' && x.metadata.name === 'reinit-guard-extra')!.metadata.namespace).toBe('coder');
  });

  it('service labels and loadBalancerSourceRanges; ServiceMonitor scrapeTimeout and relabelings', () => {
    const coder = o.find((x) => x.kind === 'Service' && x.metadata.name === 'coder')!;
    expect(coder.metadata.labels).toMatchObject({ exposure: 'internal' });
    expect(coder.spec!.loadBalancerSourceRanges).toEqual(['10.0.0.0/8']);
    const sm = o.find((x) => x.kind === 'ServiceMonitor')!;
    expect((sm.spec!.endpoints as unknown[])[0]).toMatchObject({
      scrapeTimeout: '10s',
      relabelings: [{ sourceLabels: ['__meta_kubernetes_pod_node_name'], targetLabel: 'node' }],
      metricRelabelings: [{ sourceLabels: ['__name__'], regex: 'go_.*', action: 'drop' }],
    });
  });

  it('NetworkPolicy egress: coderd pods, PostgreSQL where told, DNS', () => {
    const np = o.find((x) => x.kind === 'NetworkPolicy')!;
    expect(np.spec!.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(np.spec!.egress).toEqual([
      { ports: [{ port: 8080, protocol: 'TCP' }], to: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'coder', 'app.kubernetes.io/instance': 'coder' } } }] },
      { ports: [{ port: 6432, protocol: 'TCP' }], to: [{ ipBlock: { cidr: '10.20.0.0/16' } }] },
      { ports: [{ port: 53, protocol: 'UDP' }, { port: 53, protocol: 'TCP' }] },
    ]);
    // Off by default: the full scenario's policy restricts ingress only.
    expect(objects(readFileSync(path.join(goldenDir, 'full.yaml'), 'utf8')).find((x) => x.kind === 'NetworkPolicy')!.spec!.policyTypes).toEqual(['Ingress']);
  });

  it('a switched-off alert is left out of the PrometheusRule, and the rest still pass promtool', () => {
    const file = (parse(readFileSync(path.join(chart, 'rules/alerts.yaml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string }> }> }).groups.flatMap((g) => g.rules.map((r) => r.alert));
    const values = parse(readFileSync(path.join(chart, 'values.yaml'), 'utf8')) as { reinitGuard: { prometheusRule: { alerts: Record<string, { enable: boolean }> } } };
    // One switch per alert the file has, all on by default.
    expect(Object.keys(values.reinitGuard.prometheusRule.alerts).sort()).toEqual([...file].sort());
    expect(Object.values(values.reinitGuard.prometheusRule.alerts).every((a) => a.enable)).toBe(true);

    const spec = o.find((x) => x.kind === 'PrometheusRule')!.spec as { groups: Array<{ rules: Array<{ alert: string }> }> };
    expect(spec.groups.flatMap((g) => g.rules.map((r) => r.alert))).toEqual(file.filter((a) => a !== 'CoderReinitGuardNoReinitTraffic'));
    const dir = scratch('rules');
    try {
      const rules = path.join(dir, 'rules.yaml');
      writeFileSync(rules, JSON.stringify(spec));
      const r = run('promtool', ['check', 'rules', rules]);
      expect(r.stdout + r.stderr).toContain('SUCCESS: 5 rules found');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('helm test: a hook Pod checks /readyz on the admin port and that the proxy port answers; tests.enable=false leaves it out', () => {
    const t = o.find((x) => x.kind === 'Pod')!;
    expect(t.metadata.annotations).toMatchObject({ 'helm.sh/hook': 'test' });
    const c = (t.spec!.containers as Array<{ image: string; command: string[] }>)[0]!;
    expect(c.image).toBe('registry.example.com/mirror/busybox:1.37.0-musl');
    expect(c.command.join(' ')).toContain('http://$GUARD:9090/readyz');
    expect(c.command.join(' ')).toContain('http://$GUARD:80/');
    const off = helms[0]!.run(['template', release, chart, '-n', 'coder', '--set', 'tests.enable=false']);
    expect(objects(off.stdout).find((x) => x.kind === 'Pod')).toBeUndefined();
  });
});
