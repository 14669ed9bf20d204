// The build, as the pipeline in DESIGN.md reads: plan → fetch → render → assemble → package.
// Each stage announces itself through events; the CLI decides how that looks.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { sourceDateEpoch } from '../images/cpio.ts';
import { renderIgnitionJson } from '../ignition/render.ts';
import { mergeSnippet, parseSnippet } from '../ignition/snippets.ts';
import { provisionNode, type ProvisioningSpec } from '../overlays/provision.ts';
import { assembleDiskImage } from './assemble-disk.ts';
import { assembleHypriotImage } from './assemble-hypriot.ts';
import { assemblePxe, treeInstallImageBase, treeServesInstallImage, type PxeNodeConfig } from './assemble-pxe.ts';
import { withContext } from './errors.ts';
import type { EventSink, StageContext } from './events.ts';
import { fetchInputs, type FetchedInput } from './fetch.ts';
import { layout } from './layout.ts';
import { readLock, writeLock } from './lockfile.ts';
import { OutputWriter, type Manifest } from './output.ts';
import { planBuild, type BuildPlan } from './plan.ts';
import { renderInstallerProvisioning } from './pxe-render.ts';
import { renderCloudInit } from '../overlays/cloudinit.ts';
import type { Arch, ClusterSpec, NodeSpec, Target } from './spec.ts';
import { flatcarChannelBase, flatcarInputId } from '../images/catalog/flatcar.ts';
import { flatcarBoard } from './spec.ts';
import {
  kubernetesApplies,
  kubernetesBinariesApply,
  preparePlainBinaries,
  prepareKubernetes,
  withKubernetes,
  type BuiltSysextForArch,
  type KubernetesBundle,
} from './kubernetes-content.ts';
import { SYSEXT_DIR_ON_NODE, SYSEXT_LINK_ON_NODE, sysextPathOnNode } from '../overlays/kubernetes/sysext.ts';
import type { Ext4Entry } from '../images/ext4.ts';
import { BOOTSTRAP_TOKEN_FILE, PKI_RECORD_FILE } from '../overlays/kubernetes/pki.ts';
import { bundledImageInputs, serverRootEntriesFor, withMirror, writeMirrorBundle } from './registry-content.ts';
import { firstNodeRootEntries, withFirstNode } from './first-node.ts';
import { isServingNode } from '../overlays/first-node/services.ts';

export interface BuildOptions extends StageContext {
  spec: ClusterSpec;
  targets?: Target[];
  nodes?: string[];
  outDir: string;
  cacheDir: string;
  lockPath: string;
  offline: boolean;
}

export interface BuildResult {
  plan: BuildPlan;
  manifest: Manifest;
  clusterDir: string;
  summary: string;
}

/** A node's rendered first-boot configuration. */
export interface RenderedNode {
  node: NodeSpec;
  provisioning: ProvisioningSpec;
  /** Flatcar: the Ignition the node's OS runs with. */
  ignitionJson?: string;
  /** HypriotOS: the NoCloud seed. */
  cloudInit?: { userData: string; metaData: string; networkConfig: string };
  /** The node's Kubernetes sysext (built once per arch), when the build carries Kubernetes. */
  sysext?: BuiltSysextForArch;
  /** Files, directories and links the image builder writes onto the root filesystem (ext4), root-owned. */
  rootEntries?: Ext4Entry[];
}

async function stage<T>(events: EventSink, id: string, title: string, fn: () => Promise<T>): Promise<T> {
  events({ kind: 'stage-started', stage: id, title });
  const t0 = Date.now();
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    return withContext(e, title);
  }
  events({ kind: 'stage-finished', stage: id, title, ms: Date.now() - t0 });
  return result;
}

export async function buildCluster(o: BuildOptions): Promise<BuildResult> {
  const { spec, events, signal } = o;
  const epoch = sourceDateEpoch();
  const previousLock = await readLock(o.lockPath);
  const plan = await stage(events, 'plan', 'Plan the build', async () =>
    planBuild(spec, { targets: o.targets, nodes: o.nodes, lock: previousLock }),
  );
  const selected = spec.nodes.filter((n) => plan.nodes.some((p) => p.name === n.name));
  const k8s = kubernetesApplies(spec, selected);
  if (!k8s.ok) events({ kind: 'warning', message: `images are built without the Kubernetes bootstrap: ${k8s.reason}` });
  const binaries = kubernetesBinariesApply(spec, selected);

  const fetched = await stage(events, 'fetch', 'Fetch and verify inputs', async () => {
    const r = await fetchInputs(spec, { cacheDir: o.cacheDir, lock: previousLock, offline: o.offline, targets: fetchTargets(o.targets, plan), kubernetes: binaries, signal, events });
    await writeLock(o.lockPath, r.lock);
    return r;
  });
  const version = fetched.lock.os.version;

  const clusterDir = layout.clusterDir(o.outDir, spec.name);
  const out = new OutputWriter(clusterDir, events, signal);
  await out.begin();
  // Scratch space beside the outputs (same filesystem, so finished images are renamed into place).
  const workDir = join(clusterDir, '.work');
  await mkdir(workDir, { recursive: true });
  try {
    const registry = fetched.registry;
    const mirror = registry.ok
      ? await stage(events, 'bundle', 'Bundle container images', () =>
          writeMirrorBundle({
            plan: registry.plan,
            images: fetched.images,
            cacheDir: o.cacheDir,
            serverBuilt: selected.some((n) => n.name === registry.plan.server.node),
            out,
            workDir,
            epoch,
            signal,
          }),
        )
      : undefined;
    const rendered = await stage(events, 'render', 'Render node configs', async () => {
      const bundle = k8s.ok
        ? await prepareKubernetes({ spec, nodes: selected, inputs: fetched.inputs, clusterDir, workDir, epoch, signal })
        : undefined;
      if (bundle) {
        if (mirror) bundle.mirror = mirror;
        for (const rel of [...Object.keys(bundle.pki.files), BOOTSTRAP_TOKEN_FILE, PKI_RECORD_FILE].sort()) {
          await out.recordFile(`${layout.pkiDir}/${rel}`, { kind: 'pki', secret: true });
        }
      }
      // HypriotOS has no sysext: its nodes get the binaries as plain files on the root filesystem.
      const plain = binaries && spec.os.base === 'hypriot' ? await preparePlainBinaries({ nodes: selected, inputs: fetched.inputs, workDir, signal }) : undefined;
      return selected.map((n) => renderNode(spec, n, bundle, plain));
    });
    await stage(events, 'assemble', 'Assemble images and PXE tree', () =>
      assembleAll({ spec, version, rendered, inputs: fetched.inputs, out, epoch, workDir, signal, events }),
    );
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }

  const manifest = await stage(events, 'package', 'Write manifest and checksums', async () =>
    out.finish({
      cluster: spec.name,
      sourceDateEpoch: epoch,
      nodes: selected.map((n) => ({
        name: n.name,
        role: n.role,
        hardware: n.hardware,
        boot: n.boot,
        arch: n.arch,
        mac: n.mac ?? null,
        ip: n.ip ?? null,
      })),
      inputs: [...fetched.inputs.values()]
        .map((i: FetchedInput) => ({ id: i.id, url: i.url, version: i.version, sha256: i.sha256 }))
        .concat(fetched.images.length ? bundledImageInputs(fetched.lock) : [])
        .sort((a, b) => (a.id < b.id ? -1 : 1)),
    }),
  );
  return { plan, manifest, clusterDir, summary: summarise(clusterDir, manifest) };
}

interface AssembleAllOptions extends StageContext {
  spec: ClusterSpec;
  version: string;
  rendered: RenderedNode[];
  inputs: Map<string, FetchedInput>;
  out: OutputWriter;
  epoch: number;
  workDir: string;
}

/**
 * The targets whose inputs the build fetches: the plan's, which adds the PXE tree to a selection
 * that includes the first node serving it.
 */
function fetchTargets(requested: Target[] | undefined, plan: BuildPlan): Target[] | undefined {
  return requested?.length ? [...new Set(plan.nodes.map((n) => n.target))].sort() : requested;
}

/** Configs, then the PXE tree for the netbooted nodes, then one disk image per disk node (the first node's carries the tree). */
async function assembleAll(o: AssembleAllOptions): Promise<void> {
  const { spec, rendered, out } = o;
  for (const r of rendered) await writeConfigs(out, r);
  const pxe = rendered.filter((r) => r.node.boot === 'pxe');
  if (pxe.length) {
    await assemblePxe({
      spec,
      version: o.version,
      nodes: pxe.map((r) => pxeNodeConfig(spec, o.version, r, pxe.map((p) => p.node), o.inputs)),
      inputs: o.inputs,
      out,
      epoch: o.epoch,
      signal: o.signal,
      events: o.events,
    });
  }
  const disk = rendered.filter((r) => r.node.boot === 'disk');
  for (const [i, r0] of disk.entries()) {
    o.events({ kind: 'progress', stage: 'assemble', what: 'disk images', done: i, total: disk.length, unit: 'items' });
    const r = isServingNode(spec, r0.node) ? { ...r0, rootEntries: [...(r0.rootEntries ?? []), ...firstNodeRootEntries(spec, out)] } : r0;
    const common = { spec, rendered: r, inputs: o.inputs, out, epoch: o.epoch, workDir: o.workDir, signal: o.signal, events: o.events };
    if (spec.os.base === 'flatcar') await assembleDiskImage(common);
    else await assembleHypriotImage(common);
  }
}

export function renderNode(spec: ClusterSpec, node: NodeSpec, k8s?: KubernetesBundle, plainBinaries?: Map<Arch, Ext4Entry[]>): RenderedNode {
  let provisioning = provisionNode(spec, node);
  provisioning.kernelArgs.push(...(spec.provision?.kernelArgs ?? []), ...(node.kernelArgs ?? []));
  for (const s of [...(spec.provision?.snippets ?? []), ...(node.snippets ?? [])]) {
    provisioning = mergeSnippet(provisioning, parseSnippet(s.text, s.file));
  }
  if (spec.os.base === 'hypriot') {
    const rootEntries = plainBinaries?.get(node.arch);
    return { node, provisioning, cloudInit: renderCloudInit(provisioning, { cluster: spec.name, node: node.name }), ...(rootEntries && { rootEntries }) };
  }
  provisioning = withFirstNode(spec, node, provisioning);
  if (!k8s) return { node, provisioning, ignitionJson: renderIgnitionJson(provisioning) };
  provisioning = withKubernetes(spec, node, provisioning, k8s);
  if (k8s.mirror) withMirror(provisioning, node, k8s.mirror);
  const sysext = k8s.sysexts.get(node.arch)!;
  return {
    node,
    provisioning,
    ignitionJson: renderIgnitionJson(provisioning),
    sysext,
    ...(node.boot === 'disk' && {
      rootEntries: [
        { path: SYSEXT_DIR_ON_NODE, type: 'dir' as const, mode: 0o755 },
        { path: sysextPathOnNode(spec.kubernetes.version, node.arch), type: 'file' as const, source: sysext.path, mode: 0o644 },
        { path: SYSEXT_LINK_ON_NODE, type: 'symlink' as const, target: sysextPathOnNode(spec.kubernetes.version, node.arch) },
        ...serverRootEntriesFor(node, k8s.mirror),
      ],
    }),
  };
}

async function writeConfigs(out: OutputWriter, r: RenderedNode) {
  const meta = { kind: 'ignition' as const, node: r.node.name, arch: r.node.arch, target: targetOf(r.node), secret: true };
  if (r.ignitionJson) await out.writeFile(layout.ignition(r.node.name), r.ignitionJson, meta);
  if (r.cloudInit) {
    const ci = { ...meta, kind: 'cloud-init' as const };
    await out.writeFile(layout.cloudInit(r.node.name, 'user-data'), r.cloudInit.userData, ci);
    await out.writeFile(layout.cloudInit(r.node.name, 'meta-data'), r.cloudInit.metaData, ci);
    await out.writeFile(layout.cloudInit(r.node.name, 'network-config'), r.cloudInit.networkConfig, ci);
  }
}

function targetOf(n: NodeSpec): Target {
  return n.boot === 'pxe' ? 'pxe' : n.hardware;
}

/**
 * A netbooted node boots its own Ignition, or for install = true, an installer that writes it to disk
 * with its kernel arguments, from the image in the PXE tree when the first node serves it.
 */
function pxeNodeConfig(spec: ClusterSpec, version: string, r: RenderedNode, pxeNodes: readonly NodeSpec[], inputs: Map<string, FetchedInput>): PxeNodeConfig {
  const sysext = r.sysext && { path: r.sysext.path, fileName: r.sysext.fileName };
  if (!r.node.install) return { node: r.node, ignitionJson: r.ignitionJson!, kernelArgs: r.provisioning.kernelArgs, sysext };
  const fromTree = treeServesInstallImage(spec, pxeNodes, r.node.arch);
  const installer = renderInstallerProvisioning(r.node, r.ignitionJson!, {
    channel: spec.os.channel,
    version,
    imageBaseUrl: fromTree ? treeInstallImageBase(spec, r.node.arch) : `${flatcarChannelBase(spec.sources, spec.os.channel)}/${flatcarBoard(r.node.arch)}`,
    signingKey: fromTree ? inputs.get(flatcarInputId('image', r.node.arch))?.signature?.publicKey : spec.sources.trustedKeys[0],
    // As on a disk image: Flatcar's GRUB passes its own consoles, the OEM grub.cfg the rest.
    installedKernelArgs: r.provisioning.kernelArgs.filter((a) => !a.startsWith('console=')),
    sshAuthorizedKeys: spec.ssh.authorizedKeys,
  });
  // The installer is the node's netboot, so it gets the node's kernel arguments ([provision] and its own).
  return { node: r.node, ignitionJson: renderIgnitionJson(installer), kernelArgs: r.provisioning.kernelArgs, sysext };
}

function summarise(clusterDir: string, m: Manifest): string {
  const lines = [`Built ${m.cluster} into ${clusterDir}:`];
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  for (const a of m.artefacts) {
    if (a.kind === 'disk-image' || a.kind === 'ignition' || a.kind === 'pxe-script' || a.kind === 'dnsmasq-conf') {
      lines.push(`  ${a.path.padEnd(40)} ${mib(a.size).padStart(12)}${a.secret ? '  secret' : ''}`);
    }
  }
  lines.push(`  … ${m.artefacts.length} files in all; see manifest.json and SHA256SUMS.`);
  return lines.join('\n') + '\n';
}
