/**
 * deploy/kubernetes stays valid and true to the code, checked offline (no cluster here):
 * every manifest against the Kubernetes and KEDA API schemas, strictly (test/support/kubernetes.ts:
 * a misspelled field fails, which the doctored copies below prove), and the manifests against the
 * code and docker-compose.yml: the image and commands, every variable a container is given is
 * one its process reads and the values pass that process's own validation, ports and probe
 * paths are the ones the processes serve, secrets come from files of the Secret (never from an
 * env value or the ConfigMap) under the keys secret.example.yaml and the README name, the KEDA
 * trigger asks for the metric, labels and queue the code exports, memory limits are compose's
 * and the README's figures, and the README's steps name objects that exist. Where kubectl is
 * installed, the kustomizations are rendered by it and validated too.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { generateSecret, SECRETS } from '../../src/secrets-init/secrets.js';
import { loadConfig } from '../../src/shared/config.js';
import { createLogger } from '../../src/shared/logger.js';
import { createMetrics } from '../../src/shared/metrics.js';
import { startOpsServer } from '../../src/shared/ops-server.js';
import { QUEUE_NAMES } from '../../src/shared/queues.js';
import { manifestProblems, parseManifests, readManifests, type Manifest } from '../support/kubernetes.js';
import { ROOT, entryFile, environmentOf, read, variablesReadBy } from '../support/process-settings.js';

const DIR = 'deploy/kubernetes';
const BASE = `${DIR}/base`;
const documents = readManifests(path.join(ROOT, DIR));
const objects = documents.map((d) => d.doc);
const named = (kind: string, name: string): Manifest => {
  const found = objects.find((o) => o.kind === kind && o.metadata?.name === name);
  if (!found) throw new Error(`no ${kind} ${name} under ${DIR}`);
  return found;
};
const configMap = named('ConfigMap', 'lampi-config');
const exampleSecret = named('Secret', 'lampi-secrets');
const readme = read(`${DIR}/README.md`);

interface Service {
  image?: string;
  command?: string[];
  environment?: Record<string, string | number | boolean | null>;
  mem_limit?: string;
}
const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, Service> };

/** Every pod template of ours, with what it runs. */
const WORKLOAD_KINDS = ['Deployment', 'StatefulSet', 'Job'];
const workloads = objects
  .filter((o) => WORKLOAD_KINDS.includes(o.kind))
  .map((o) => ({
    object: o,
    name: o.metadata.name as string,
    /** The compose service that runs the same process. */
    component: o.spec.template.metadata.labels['app.kubernetes.io/component'] as string,
    pod: o.spec.template.spec as Manifest,
    container: o.spec.template.spec.containers[0] as Manifest,
  }));
const workload = (component: string) => workloads.find((w) => w.component === component)!;

/** What the pod's name is at run time: fixed ordinals for a StatefulSet, a random suffix otherwise. */
const podName = (w: (typeof workloads)[number]) =>
  w.object.kind === 'StatefulSet' ? `${w.name}-${Number(w.object.spec.replicas) - 1}` : `${w.name}-5d8f7c9b6d-x2x7q`;

/** The container's environment as the kubelet builds it: literal values, the ConfigMap's keys, the pod's own fields. */
function environment(w: (typeof workloads)[number]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of w.container.env as Manifest[]) {
    if (entry.value !== undefined) env[entry.name] = String(entry.value);
    else if (entry.valueFrom?.configMapKeyRef) {
      const ref = entry.valueFrom.configMapKeyRef;
      expect(ref.name, `${w.name} ${entry.name}`).toBe('lampi-config');
      expect(configMap.data, `${w.name} ${entry.name}: lampi-config has no key ${ref.key}`).toHaveProperty(ref.key);
      env[entry.name] = configMap.data[ref.key];
    } else if (entry.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[entry.name] = podName(w);
    else
      throw new Error(`${w.name} ${entry.name}: only a value, a lampi-config key or the pod's name (no secretKeyRef: secrets are files)`);
  }
  return env;
}

/** The Secret's volume of a pod: where it is mounted and which keys it projects (key → file path). */
function secretMount(w: (typeof workloads)[number]) {
  const volume = (w.pod.volumes as Manifest[] | undefined)?.find((v) => v.secret);
  if (!volume) return undefined;
  const mount = (w.container.volumeMounts as Manifest[]).find((m) => m.name === volume.name)!;
  const items: Record<string, string> = Object.fromEntries((volume.secret.items as Manifest[]).map((item) => [item.key, item.path]));
  return { secretName: volume.secret.secretName as string, mountPath: mount.mountPath as string, readOnly: mount.readOnly, items };
}

/** Kubernetes quantities and compose sizes in bytes: 256Mi, 1Gi, 256m (compose's megabytes are MiB). */
function bytes(size: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|k|m|g)?b?$/i.exec(size);
  if (!m) throw new Error(`not a memory size: ${size}`);
  const unit = { ki: 1024, mi: 1024 ** 2, gi: 1024 ** 3, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'k'] ?? 1;
  return Number(m[1]) * unit;
}

const kubectl = (() => {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
})();
if (!kubectl)
  console.log('kubernetes-manifests: kubectl is not installed, so the kustomizations are not rendered (the files are checked one by one)');
const render = (dir: string) => parseManifests(execFileSync('kubectl', ['kustomize', path.join(ROOT, dir)], { encoding: 'utf8' }), dir);

describe('deploy/kubernetes: every manifest is valid against the Kubernetes and KEDA API schemas', () => {
  it('has the objects of the deployment, one kind each where one is meant', () => {
    const list = objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(list).toEqual([
      'ConfigMap/lampi-config',
      'Deployment/lampi-dashboard',
      'Deployment/lampi-keen-sink',
      'Deployment/lampi-worker',
      'Job/lampi-migrate',
      'Namespace/lampi',
      'PodDisruptionBudget/lampi-subscriber',
      'ScaledObject/lampi-worker',
      'Secret/lampi-secrets',
      'Service/lampi-dashboard',
      'Service/lampi-keen-sink',
      'Service/lampi-subscriber',
      'StatefulSet/lampi-subscriber',
    ]);
  });

  it.each(documents.map((d) => [`${d.file} #${d.index} ${d.doc.kind}/${d.doc.metadata?.name}`, d.doc] as const))('%s', (_name, doc) => {
    expect(manifestProblems(doc)).toEqual([]);
  });

  describe('the check fails on a doctored copy', () => {
    const copy = <T>(doc: T): T => structuredClone(doc);
    const worker = named('Deployment', 'lampi-worker');

    it('a misspelled field (imagePullPolcy)', () => {
      const doc = copy(worker);
      doc.spec.template.spec.containers[0].imagePullPolcy = 'Always';
      expect(manifestProblems(doc)).toEqual(['data/spec/template/spec/containers/0/imagePullPolcy is not a field of Deployment']);
    });

    it('a field in the wrong place (replicas in the pod template)', () => {
      const doc = copy(named('StatefulSet', 'lampi-subscriber'));
      doc.spec.template.spec.replicas = 2;
      expect(manifestProblems(doc)).toEqual(['data/spec/template/spec/replicas is not a field of StatefulSet']);
    });

    it("a wrong type (a port given by name) and a missing required field (a container's name)", () => {
      const doc = copy(worker);
      doc.spec.template.spec.containers[0].ports[0].containerPort = 'metrics';
      delete doc.spec.template.spec.containers[0].name;
      const problems = manifestProblems(doc);
      expect(problems.join('; ')).toMatch(/containerPort must be integer/);
      expect(problems.join('; ')).toMatch(/containers\/0 must have required property name/);
    });

    it("KEDA's own field names: minReplicas is not a ScaledObject field (minReplicaCount is), and trigger metadata are strings", () => {
      const doc = copy(named('ScaledObject', 'lampi-worker'));
      doc.spec.minReplicas = 1;
      doc.spec.triggers[0].metadata.threshold = 64;
      const problems = manifestProblems(doc);
      expect(problems).toContain('data/spec/minReplicas is not a field of ScaledObject');
      expect(problems.join('; ')).toMatch(/triggers\/0\/metadata\/threshold must be string/);
    });

    it('a kind it has no schema for is reported, never passed', () => {
      expect(manifestProblems({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'x' } })).toEqual([
        'example.com/v1 Widget is not a kind this check has a schema for',
      ]);
    });
  });

  it('kustomization.yaml lists every manifest of base/ but the namespace (applied first) and the Secret example (never applied)', () => {
    const kustomization = parse(read(`${BASE}/kustomization.yaml`)) as Record<string, any>;
    expect(Object.keys(kustomization).sort()).toEqual(['apiVersion', 'kind', 'namespace', 'resources']);
    expect(kustomization.apiVersion).toBe('kustomize.config.k8s.io/v1beta1');
    expect(kustomization.namespace).toBe(named('Namespace', 'lampi').metadata.name);
    const files = readdirSync(path.join(ROOT, BASE)).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    expect([...kustomization.resources].sort()).toEqual(files.filter((f) => !['namespace.yaml', 'secret.example.yaml'].includes(f)).sort());
    const overlay = parse(read(`${DIR}/overlays/example/kustomization.yaml`)) as Record<string, any>;
    for (const resource of overlay.resources) expect(existsSync(path.join(ROOT, DIR, 'overlays/example', resource))).toBe(true);
  });

  it.skipIf(!kubectl)('kubectl kustomize renders base/ and the example overlay, every object valid and in its namespace', () => {
    const base = render(BASE);
    expect(base.map((d) => `${d.doc.kind}/${d.doc.metadata.name}`).sort()).toEqual(
      objects
        .filter((o) => !['Namespace', 'Secret'].includes(o.kind))
        .map((o) => `${o.kind}/${o.metadata.name}`)
        .sort(),
    );
    const overlay = render(`${DIR}/overlays/example`);
    for (const { doc } of [...base, ...overlay]) {
      expect(manifestProblems(doc), `${doc.kind}/${doc.metadata.name}`).toEqual([]);
      expect(doc.metadata.namespace).toBe('lampi');
    }
    const images = overlay.filter((d) => d.doc.spec?.template).map((d) => d.doc.spec.template.spec.containers[0].image);
    expect(new Set(images)).toEqual(new Set(['registry.example.com/lampi-ingest:0.1.0']));
    // The README's step 4: the label selects the ConfigMap and the Job, nothing else.
    const step = base.filter((d) => d.doc.metadata.labels?.['lampi-ingest/step'] === 'migrate').map((d) => d.doc.kind);
    expect(step.sort()).toEqual(['ConfigMap', 'Job']);
  });
});

describe('deploy/kubernetes agrees with the code and docker-compose.yml', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const cleanup of cleanups) await cleanup();
  });

  it("runs compose's image and each process's compose command, one container per pod", () => {
    expect(workloads.map((w) => w.component).sort()).toEqual(['dashboard', 'keen-sink', 'migrate', 'subscriber', 'worker']);
    for (const w of workloads) {
      const service = compose.services[w.component]!;
      expect(w.pod.containers).toHaveLength(1);
      expect(w.container.image, w.name).toBe(service.image);
      expect(w.container.command, w.name).toEqual(service.command);
      expect(entryFile(w.container)).toBe(`src/${w.component}/main.ts`);
    }
  });

  it.each(workloads.map((w) => [w.name, w] as const))(
    '%s: every variable it is given is one its process reads, and the values pass its own validation',
    async (name, w) => {
      const env = environment(w);
      const { sections, names } = variablesReadBy(entryFile(w.container));
      expect(Object.keys(env).filter((key) => !names.has(key))).toEqual([]);
      // The Secret's files as the kubelet projects them: only the keys this pod's volume lists.
      const mount = secretMount(w);
      const dir = mkdtempSync(path.join(tmpdir(), 'lampi-kube-secrets-'));
      for (const file of Object.values(mount?.items ?? {})) writeFileSync(path.join(dir, file), generateSecret());
      const resolved = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, mount ? v.replace(mount.mountPath, dir) : v]));
      expect(() => loadConfig(sections, resolved), name).not.toThrow();
    },
  );

  it.each(workloads.map((w) => [w.name, w] as const))(
    "%s: gives the values compose gives (but for the pod's own client id and our Services' names)",
    (_name, w) => {
      const ours = environment(w);
      const theirs = environmentOf(compose.services[w.component]!, {});
      const expected: Record<string, string> = {};
      for (const key of Object.keys(ours)) if (key in theirs) expected[key] = theirs[key]!;
      const differs: Record<string, string> = {};
      // Each subscriber replica's own persistent sessions (subscriber.yaml says why).
      if (w.component === 'subscriber') differs.MQTT_CLIENT_ID = podName(w);
      // keen-sink's Service here is lampi-keen-sink (compose's service is keen-sink).
      if (w.component === 'worker') {
        const sink = named('Service', 'lampi-keen-sink');
        differs.KEEN_API_URL = `http://${sink.metadata.name}:${sink.spec.ports[0].port}`;
      }
      expect(ours).toMatchObject({ ...expected, ...differs });
    },
  );

  it('no password in an env value or the ConfigMap: every secret is a file of the lampi-secrets volume, mounted read-only', () => {
    const secretName = /PASSWORD|_KEY$|TOKEN/;
    for (const [key, value] of Object.entries(configMap.data as Record<string, string>)) {
      expect(key, 'a secret in the ConfigMap').not.toMatch(secretName);
      if (/^\w+:\/\//.test(value)) expect(new URL(value).password, `lampi-config ${key} carries a password`).toBe('');
    }
    for (const w of workloads) {
      const mount = secretMount(w);
      for (const entry of w.container.env as Manifest[]) {
        expect(entry.valueFrom?.secretKeyRef, `${w.name} ${entry.name}`).toBeUndefined();
        if (!secretName.test(entry.name)) continue;
        expect(entry.name, `${w.name} ${entry.name} must be given as ${entry.name}_FILE`).toMatch(/_FILE$/);
        expect(mount, `${w.name} reads ${entry.name} but mounts no Secret`).toBeDefined();
        const file = path.relative(mount!.mountPath, entry.value);
        expect(Object.values(mount!.items), `${w.name} ${entry.name}=${entry.value} is not a projected key`).toContain(file);
      }
      if (!mount) continue;
      expect(mount.secretName).toBe(exampleSecret.metadata.name);
      expect(mount.readOnly).toBe(true);
      // Least privilege: a key nobody in the pod reads is not projected into it.
      const read = (w.container.env as Manifest[]).filter((e) => e.name.endsWith('_FILE')).map((e) => path.basename(e.value));
      expect(Object.values(mount.items).sort()).toEqual([...new Set(read)].sort());
      expect((w.pod.volumes as Manifest[]).find((v) => v.secret)!.secret.defaultMode).toBe(0o440);
      // The image's node user reads the files through the group (mode 0440, fsGroup).
      expect(w.pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000 });
    }
  });

  it("the Secret's keys are the example's and secrets-init's files, under the paths compose mounts them at; the example holds no value", () => {
    const keys = Object.keys(exampleSecret.stringData as Record<string, string>).sort();
    expect(keys).toEqual(SECRETS.map((s) => s.file).sort());
    for (const value of Object.values(exampleSecret.stringData as Record<string, string>)) expect(value).toBe('');
    expect(exampleSecret.data).toBeUndefined();
    for (const w of workloads) {
      const mount = secretMount(w);
      for (const key of Object.keys(mount?.items ?? {})) expect(keys, `${w.name} projects ${key}`).toContain(key);
      expect(mount?.mountPath ?? '/run/secrets/lampi').toBe('/run/secrets/lampi');
    }
    // The README's kubectl create secret names every key once.
    const create = /kubectl[^\n]* create secret generic lampi-secrets[^`]*/.exec(readme)?.[0];
    expect(create, 'README: the kubectl create secret command').toBeDefined();
    const given = [...create!.matchAll(/--from-file=([\w-]+)=/g)].map((m) => m[1]!).sort();
    expect(given).toEqual(keys);
  });

  it('ports: each container listens where its process does by default, and compose agrees', () => {
    const defaultPort = (name: string) => Number(/port: config\.METRICS_PORT \?\? (\d+)/.exec(read(`src/${name}/main.ts`))![1]);
    const expected: Record<string, number> = {
      subscriber: defaultPort('subscriber'),
      worker: defaultPort('worker'),
      dashboard: loadConfig(['dashboard'], {}).DASHBOARD_PORT,
      'keen-sink': loadConfig(['common', 'keenSink'], {
        KEEN_SINK_DATABASE_URL: 'postgresql://u@h/d',
        KEEN_PROJECT_ID: 'p',
        KEEN_WRITE_KEY: 'w',
        KEEN_READ_KEY: 'r',
      }).KEEN_SINK_PORT,
    };
    expect(expected).toEqual({ subscriber: 9101, worker: 9102, dashboard: 3000, 'keen-sink': 8080 });
    const setting = { subscriber: 'METRICS_PORT', worker: 'METRICS_PORT', dashboard: 'DASHBOARD_PORT', 'keen-sink': 'KEEN_SINK_PORT' };
    for (const [component, port] of Object.entries(expected)) {
      const w = workload(component);
      expect(w.container.ports.map((p: Manifest) => p.containerPort)).toEqual([port]);
      expect(environment(w)[setting[component as keyof typeof setting]]).toBe(String(port));
      const annotations = w.object.spec.template.metadata.annotations;
      if (annotations?.['prometheus.io/scrape']) expect(annotations['prometheus.io/port']).toBe(String(port));
    }
  });

  it('Services select the pods they are for and point at ports the containers name', () => {
    for (const service of objects.filter((o) => o.kind === 'Service')) {
      const pods = workloads.filter((w) =>
        Object.entries(service.spec.selector).every(([k, v]) => w.object.spec.template.metadata.labels[k] === v),
      );
      expect(pods.map((w) => w.name)).toEqual([service.metadata.name]);
      for (const port of service.spec.ports) {
        expect(pods[0]!.container.ports.map((p: Manifest) => p.name)).toContain(port.targetPort);
        expect(pods[0]!.container.ports.find((p: Manifest) => p.name === port.targetPort).containerPort).toBe(port.port);
      }
    }
  });

  it('probes: liveness on /healthz and readiness on /readyz, on the port that serves them, which the processes really answer', async () => {
    for (const w of workloads.filter((w) => w.object.kind !== 'Job')) {
      const { livenessProbe, readinessProbe } = w.container;
      expect(livenessProbe.httpGet.path, w.name).toBe('/healthz');
      expect(readinessProbe.httpGet.path, w.name).toBe('/readyz');
      for (const probe of [livenessProbe, readinessProbe, w.container.startupProbe].filter(Boolean))
        expect(
          w.container.ports.map((p: Manifest) => p.name),
          w.name,
        ).toContain(probe.httpGet.port);
    }
    // The subscriber's and worker's ops server, started as they start it: /healthz answers at
    // once, /readyz is 503 until the process has its connections.
    const ops = await startOpsServer({
      service: 'subscriber',
      port: 0,
      host: '127.0.0.1',
      metrics: createMetrics('subscriber'),
      logger: createLogger('kubernetes-manifests-test', 'silent'),
    });
    cleanups.push(() => ops.close());
    const status = async (probe: Manifest) => (await fetch(`http://127.0.0.1:${ops.port}${probe.httpGet.path}`)).status;
    const { livenessProbe, readinessProbe } = workload('subscriber').container;
    expect([await status(livenessProbe), await status(readinessProbe)]).toEqual([200, 503]);
    ops.serve({ readiness: async () => ({ redis: true, mqtt: true }) });
    expect(await status(readinessProbe)).toBe(200);
    // The dashboard and keen-sink serve theirs on their own port (they need Redis or PostgreSQL to start).
    expect(read('src/dashboard/dashboard.ts')).toMatch(/app\.get\('\/healthz'[\s\S]*app\.get\('\/readyz'/);
    expect(read('src/keen-sink/server.ts')).toMatch(/pathname === '\/healthz'[\s\S]*pathname === '\/readyz'/);
  });

  it('the subscriber: 2 replicas of a StatefulSet in one share group, a client id per pod the config accepts, and a PodDisruptionBudget', () => {
    const sts = named('StatefulSet', 'lampi-subscriber');
    expect(sts.spec.replicas).toBe(2);
    expect(named('Service', sts.spec.serviceName).spec.clusterIP).toBe('None');
    const w = workload('subscriber');
    expect((w.container.env as Manifest[]).find((e) => e.name === 'MQTT_CLIENT_ID')!.valueFrom.fieldRef.fieldPath).toBe('metadata.name');
    // Every ordinal up to 99 makes a client id MQTT_CLIENT_ID's own rule accepts.
    const env = { ...environment(w), MQTT_PASSWORD_FILE: '' };
    for (const ordinal of [0, 1, 99])
      expect(loadConfig(['mqtt'], { ...env, MQTT_CLIENT_ID: `${sts.metadata.name}-${ordinal}` }).MQTT_CLIENT_ID).toBeDefined();
    expect(environment(w).MQTT_SHARE_GROUP).toBe(configMap.data.MQTT_SHARE_GROUP);
    expect(read('src/subscriber/connections.ts')).toContain('`$share/${shareGroup}/${topic}`');
    const pdb = named('PodDisruptionBudget', 'lampi-subscriber');
    expect(pdb.spec.minAvailable).toBe(1);
    expect(pdb.spec.selector.matchLabels).toEqual(sts.spec.selector.matchLabels);
  });

  it('KEDA scales the worker Deployment on the lamp-states queue’s waiting jobs, exactly as the code exports them', () => {
    const scaled = named('ScaledObject', 'lampi-worker');
    const worker = named('Deployment', scaled.spec.scaleTargetRef.name);
    expect(scaled.spec.scaleTargetRef.kind ?? 'Deployment').toBe('Deployment');
    // The HPA owns the count: a replicas field would be reset by every kubectl apply.
    expect(worker.spec.replicas).toBeUndefined();
    expect(scaled.spec.minReplicaCount).toBeGreaterThanOrEqual(1);
    const [trigger, ...others] = scaled.spec.triggers;
    expect(others).toEqual([]);
    expect(trigger.type).toBe('prometheus');
    // The Prometheus trigger's fields as KEDA documents them (keda.sh/docs/latest/scalers/prometheus).
    const documented = [
      'serverAddress',
      'query',
      'threshold',
      'activationThreshold',
      'namespace',
      'customHeaders',
      'ignoreNullValues',
      'queryParameters',
      'unsafeSsl',
      'timeout',
    ];
    expect(Object.keys(trigger.metadata).filter((key) => !documented.includes(key))).toEqual([]);
    expect(Object.keys(trigger.metadata)).toEqual(expect.arrayContaining(['serverAddress', 'query', 'threshold']));
    expect(Number(trigger.metadata.threshold)).toBeGreaterThan(0);

    const metrics = createMetrics('worker');
    const gauge = metrics.queueDepth as unknown as { name: string; labelNames: string[] };
    const states = /const QUEUE_STATES = \[([^\]]*)\]/
      .exec(read('src/shared/metrics.ts'))![1]!
      .match(/'(\w+)'/g)!
      .map((s) => s.slice(1, -1));
    const check = (query: string, extraLabels: string[]) => {
      const m = /^max\((\w+)\{([^}]*)\}\)$/.exec(query);
      expect(m, query).not.toBeNull();
      expect(metrics.registry.getSingleMetric(m![1]!), `${m![1]} is not a metric the code exports`).toBe(metrics.queueDepth);
      const labels = Object.fromEntries([...m![2]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1]!, l[2]!]));
      expect(labels.queue).toBe(QUEUE_NAMES.lampStates);
      expect(states).toContain(labels.state);
      expect(labels.state).toBe('waiting');
      expect(
        Object.keys(labels)
          .filter((l) => !gauge.labelNames.includes(l))
          .sort(),
      ).toEqual(extraLabels);
    };
    check(trigger.metadata.query, []);
    // The overlay's query adds only the target label Prometheus gives every scraped pod.
    const overlay = read(`${DIR}/overlays/example/kustomization.yaml`);
    check(/path: \/spec\/triggers\/0\/metadata\/query\n\s+value: (.*)/.exec(overlay)![1]!.trim(), ['namespace']);
  });

  it("memory: limits are compose's mem_limit and at least 1.5 × the peak RSS the README gives, requests at least its typical RSS", () => {
    // | container | peak RSS (MiB) | typical RSS (MiB) | memory request | memory limit | CPU request | measured with |
    const rows = Object.fromEntries(
      [...readme.matchAll(/^\| `?([\w-]+)`? \| (\d+) \| (\d+) \| (\w+) \| (\w+) \| (\w+) \|/gm)].map((m) => [
        m[1]!,
        { peak: Number(m[2]) * 1024 ** 2, typical: Number(m[3]) * 1024 ** 2, request: m[4]!, limit: m[5]!, cpu: m[6]! },
      ]),
    );
    expect(Object.keys(rows).sort()).toEqual(workloads.map((w) => w.component).sort());
    for (const w of workloads) {
      const { requests, limits } = w.container.resources;
      const row = rows[w.component]!;
      expect([requests.memory, limits.memory, requests.cpu], w.name).toEqual([row.request, row.limit, row.cpu]);
      expect(bytes(limits.memory), w.name).toBe(bytes(compose.services[w.component]!.mem_limit!));
      expect(bytes(limits.memory), w.name).toBeGreaterThanOrEqual(1.5 * row.peak);
      expect(bytes(requests.memory), w.name).toBeGreaterThanOrEqual(row.typical);
      expect(bytes(requests.memory)).toBeLessThanOrEqual(bytes(limits.memory));
      // V8's old space fits in the limit with room for the rest of the process.
      const heap = (w.container.command as string[]).find((a) => a.startsWith('--max-old-space-size='));
      if (heap) expect(Number(heap.split('=')[1]) * 1024 ** 2).toBeLessThan(bytes(limits.memory) / 2);
    }
  });

  it("the README's steps name files and objects that exist", () => {
    for (const file of readme.matchAll(/deploy\/kubernetes\/[\w./-]+/g)) expect(existsSync(path.join(ROOT, file[0])), file[0]).toBe(true);
    expect(readme).toContain('kubectl apply -f deploy/kubernetes/base/namespace.yaml');
    expect(readme).toContain('kubectl apply -k deploy/kubernetes/base -l lampi-ingest/step=migrate');
    expect(readme).toContain('kubectl -n lampi wait --for=condition=complete job/lampi-migrate');
    expect(readme).toContain('kubectl apply -k deploy/kubernetes/base\n');
    const step = objects.filter((o) => o.metadata.labels?.['lampi-ingest/step'] === 'migrate').map((o) => `${o.kind}/${o.metadata.name}`);
    expect(step.sort()).toEqual(['ConfigMap/lampi-config', 'Job/lampi-migrate']);
    // `kubectl wait` needs the finished Job to stay (no ttlSecondsAfterFinished).
    expect(named('Job', 'lampi-migrate').spec.ttlSecondsAfterFinished).toBeUndefined();
  });
});
