// systemd units that run a container with containerd's ctr (Flatcar has no Docker by default): an
// image the bundle pre-imported, on the host network, host paths bind-mounted read-only. The first
// node's services (PXE httpd, dnsmasq) and the registry mirror are all run this way.

/** containerd's CLI as Flatcar's containerd sysext installs it. */
export const CTR = '/usr/bin/ctr';

/** Where the images live in containerd and which unit imports them before the services start. */
export interface ContainerContext {
  /** containerd namespace the bundle imports the first node's images into. */
  namespace: string;
  /** The unit that imports them (ordered before the services). */
  importUnit: string;
}

/** A host path bound read-only at another path inside the container. */
export interface ReadOnlyMount {
  host: string;
  container: string;
}

export interface ContainerUnitSpec {
  /** The unit's Description (with " (bramble)") and, without `comment`, its header comment. */
  description: string;
  /** The header comment after "Written by bramble: ", when it says more than the description. */
  comment?: string;
  container: string;
  image: string;
  /** Host paths bind-mounted read-only: at the same path inside, or where a ReadOnlyMount says. */
  readOnlyPaths: Array<string | ReadOnlyMount>;
  /** Capabilities beyond containerd's default set (ctr --cap-add). */
  capabilities?: string[];
  /** The process: the image's entrypoint gets these arguments (or they are the command, without one). */
  args?: string[];
}

/** One bind mount as `ctr run --mount` takes it: read-only, recursive, at `dst` (the same path by default). */
export function readOnlyMount(src: string, dst = src): string {
  for (const path of [src, dst]) {
    if (!/^\/[A-Za-z0-9._/-]+$/.test(path)) throw new Error(`bind mount path ${path} cannot be passed to ctr`);
  }
  return `type=bind,src=${src},dst=${dst},options=rbind:ro`;
}

/** A unit running `spec` with ctr: stale containers of a crash removed first, restarted when it exits. */
export function containerUnit(c: ContainerContext, spec: ContainerUnitSpec): string {
  const ctr = `${CTR} --namespace ${c.namespace}`;
  const run = [
    `${ctr} run --rm --net-host`,
    ...(spec.capabilities ?? []).map((cap) => `--cap-add ${cap}`),
    ...spec.readOnlyPaths.map((p) => `--mount ${typeof p === 'string' ? readOnlyMount(p) : readOnlyMount(p.host, p.container)}`),
    spec.image,
    spec.container,
    ...(spec.args ?? []),
  ].join(' ');
  return [
    `# Written by bramble: ${spec.comment ?? spec.description}.`,
    '[Unit]',
    `Description=${spec.description} (bramble)`,
    `Requires=containerd.service ${c.importUnit}`,
    `After=containerd.service ${c.importUnit} network-online.target`,
    'Wants=network-online.target',
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    // A task or container left by a crash or power loss would make `ctr run` refuse the name.
    `ExecStartPre=-${ctr} tasks delete --force ${spec.container}`,
    `ExecStartPre=-${ctr} containers delete ${spec.container}`,
    // ctr run forwards systemd's SIGTERM to the task; --rm removes the container when it exits.
    `ExecStart=${run}`,
    'Restart=always',
    'RestartSec=5',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}
