// What the registry bundle holds and when, decided at plan time: the example cluster's images (kubeadm
// for the exact patch, flannel, kube-vip with its VIP, the registry server, the first node's service
// images, extra images by the name cluster.toml gives), for the arches of all its nodes, served by the
// first control-plane node; nothing with registry.mirror = false or without the bootstrap; and a
// `docker-daemon:` extra image exported from the Docker daemon before any registry is asked, so a
// daemon that is not there is exit 4 naming its socket (test/docker-daemon-bundle.test.ts bundles one).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HostError } from '../builders/errors.ts';
import { discardEvents } from '../builders/events.ts';
import { parseCluster } from '../builders/load.ts';
import { formatPlan, planBuild } from '../builders/plan.ts';
import { planRegistryBundle, pullBundleImages } from '../builders/registry-content.ts';
import { tempDir } from './helpers/tmp.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const exampleText = readFileSync(join(root, 'examples/cluster.toml'), 'utf8');
const withText = (edit: (t: string) => string) => parseCluster(edit(exampleText), 'cluster.toml');

describe('registry bundle plan', () => {
  it('the example cluster: every image it runs, for amd64 and arm64, served by cp-1 on port 5000', () => {
    const plan = planBuild(withText((t) => t.replace('mirror = true', 'mirror = true\nextra_images = ["nginx:1.27", "ghcr.io/acme/app@sha256:' + 'a'.repeat(64) + '"]')));
    const b = plan.registry.bundle!;
    assert.deepEqual(
      b.images.map((i) => `${i.origin} ${i.ref}`),
      [
        'kubeadm registry.k8s.io/kube-apiserver:v1.33.4',
        'kubeadm registry.k8s.io/kube-controller-manager:v1.33.4',
        'kubeadm registry.k8s.io/kube-scheduler:v1.33.4',
        'kubeadm registry.k8s.io/kube-proxy:v1.33.4',
        'kubeadm registry.k8s.io/coredns/coredns:v1.12.0',
        'kubeadm registry.k8s.io/pause:3.10',
        'kubeadm registry.k8s.io/etcd:3.5.21-0',
        'cni ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3',
        'cni ghcr.io/flannel-io/flannel:v0.28.9',
        'kube-vip ghcr.io/kube-vip/kube-vip:v1.2.3',
        'registry-server docker.io/library/registry:2.8.3',
        'first-node docker.io/library/busybox:1.37',
        'first-node quay.io/poseidon/dnsmasq:v0.5.0',
        'extra nginx:1.27',
        `extra ghcr.io/acme/app@sha256:${'a'.repeat(64)}`,
      ],
    );
    assert.deepEqual(b.arches, ['amd64', 'arm64']);
    assert.equal(b.address, '192.168.50.10:5000');
    assert.equal(b.servedBy, 'cp-1');
    assert.equal(plan.registry.bundleMissing, null);
    const text = formatPlan(plan);
    assert.match(text, /^ {2}registry {4}mirror of 15 images for amd64 arm64, served by cp-1 at 192\.168\.50\.10:5000; every node pulls through it$/m);
    assert.match(text, /^images \(15\) in out\/demo\/registry\/ and oci\/<arch>\.oci\.tar$/m);
  });

  it('the whole cluster\'s arches, whatever --target selects: the mirror serves every node', () => {
    const plan = planBuild(withText((t) => t), { targets: ['rpi4'] });
    assert.deepEqual(plan.registry.bundle!.arches, ['amd64', 'arm64']);
  });

  it('kube-vip only with a VIP', () => {
    const plan = planBuild(withText((t) => t.replace('api_vip = "192.168.50.5"\n', '')));
    assert.ok(!plan.registry.bundle!.images.some((i) => i.origin === 'kube-vip'));
  });

  it('nothing with registry.mirror = false, and the plan says so', () => {
    const plan = planBuild(withText((t) => t.replace('mirror = true', 'mirror = false')));
    assert.equal(plan.registry.bundle, null);
    assert.equal(plan.registry.bundleMissing, 'registry.mirror = false');
    assert.match(formatPlan(plan), /^ {2}registry {4}no mirror bundled: registry\.mirror = false$/m);
  });

  it('nothing for a DHCP-only cluster: no node could be told where the mirror is', () => {
    const spec = parseCluster('name = "home"\n[[nodes]]\nname = "cp-1"\nrole = "control-plane"\nhardware = "pc"\n', 'cluster.toml');
    const plan = planBuild(spec);
    assert.equal(plan.registry.bundle, null);
    assert.match(plan.registry.bundleMissing!, /^there is no Kubernetes bootstrap \(cluster "home": the Kubernetes API endpoint is unknown/);
    assert.match(formatPlan(plan), /^ {2}registry {4}no mirror bundled: there is no Kubernetes bootstrap/m);
  });

  it('a docker-daemon: extra image is exported before any registry is asked: no daemon at DOCKER_HOST is exit 4 naming it', async (t) => {
    const spec = withText((t0) => t0.replace('mirror = true', 'mirror = true\nextra_images = ["docker-daemon:myapp:1.0"]'));
    const decision = planRegistryBundle(spec, spec.nodes);
    assert.ok(decision.ok);
    const cacheDir = await tempDir(t, 'registry-plan');
    // Sources point nowhere reachable: a request would fail with another error than the one expected.
    spec.sources.registries = Object.fromEntries(['docker.io', 'registry.k8s.io', 'ghcr.io', 'quay.io'].map((h) => [h, 'http://127.0.0.1:9']));
    const socket = join(cacheDir, 'no-daemon.sock');
    const previous = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = `unix://${socket}`;
    t.after(() => {
      if (previous === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = previous;
    });
    await assert.rejects(
      pullBundleImages(decision.plan, { spec, cacheDir, offline: false, signal: new AbortController().signal, events: discardEvents }),
      (e: unknown) => {
        assert.ok(e instanceof HostError, String(e));
        assert.equal(e.exitCode, 4);
        assert.match(e.message, new RegExp(`^cannot reach the Docker daemon at unix://${socket.replace(/[.]/g, '\\.')} to export myapp:1\\.0`));
        assert.match(e.hint ?? '', /start the Docker daemon .* or point DOCKER_HOST at the one that has the image/);
        return true;
      },
    );
  });
});
