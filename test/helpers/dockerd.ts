// A private Docker daemon for tests: Debian's dockerd on its own socket, data root and exec root in a
// temp dir, with the vfs storage driver and no networking of its own (no bridge, no iptables), so it
// touches nothing of the host's Docker and needs no kernel overlay support. It needs root. The test
// that starts it stops it (and its containerd) in t.after, and the temp dir goes with it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Dockerode from 'dockerode';
import { requireTool } from '../../builders/exec.ts';

export interface PrivateDockerd {
  /** The daemon's socket path. */
  socket: string;
  /** How dockerode (and bramble's docker-daemon source) reaches it. */
  options: Dockerode.DockerOptions;
  docker: Dockerode;
  /** `unix://<socket>`, for DOCKER_HOST and skopeo's --src-daemon-host. */
  host: string;
}

/** Why a private dockerd cannot run here, or undefined when it can. */
export function dockerdUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'dockerd needs root (CI runs the tests as root)';
  return undefined;
}

async function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Start dockerd and wait until it answers; it is stopped and its files removed when the test ends. */
export async function startDockerd(t: { after: (fn: () => Promise<void>) => void }): Promise<PrivateDockerd> {
  const dockerd = requireTool('dockerd'); // a missing dockerd is a HostToolError naming the docker.io package
  // Short: the socket path (and containerd's socket under the exec root) must fit in sun_path (108 bytes).
  const dir = await mkdtemp('/tmp/bramble-dockerd-');
  const socket = join(dir, 'docker.sock');
  const config = join(dir, 'daemon.json');
  await writeFile(config, '{}\n');
  const log = await open(join(dir, 'dockerd.log'), 'w');
  const child = spawn(
    dockerd,
    [
      '--config-file', config,
      '--host', `unix://${socket}`,
      '--data-root', join(dir, 'data'),
      '--exec-root', join(dir, 'exec'),
      '--pidfile', join(dir, 'docker.pid'),
      '--storage-driver', 'vfs',
      '--iptables=false',
      '--ip6tables=false',
      '--ip-masq=false',
      '--bridge', 'none',
      '--userland-proxy=false',
      '--log-level', 'warn',
    ],
    { stdio: ['ignore', log.fd, log.fd] },
  );
  t.after(async () => {
    if (!(await waitForExit(child, 0))) {
      child.kill('SIGTERM');
      // dockerd stops the containerd it started before it exits.
      if (!(await waitForExit(child, 30_000))) {
        child.kill('SIGKILL');
        await waitForExit(child, 5_000);
        // Killed, dockerd undid nothing: its containerd still runs and its data root may still be
        // bind-mounted onto itself (dockerd does that on a private /tmp). Without this, rm fails (EBUSY).
        const ctrdPid = Number((await readFile(join(dir, 'exec', 'containerd', 'containerd.pid'), 'utf8').catch(() => '')).trim());
        if (ctrdPid > 0) {
          try {
            process.kill(ctrdPid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
        spawnSync('umount', ['-l', join(dir, 'data')], { stdio: 'ignore' });
      }
    }
    await log.close();
    await rm(dir, { recursive: true, force: true });
  });

  const options: Dockerode.DockerOptions = { socketPath: socket };
  const docker = new Dockerode(options);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`dockerd exited (${child.exitCode ?? child.signalCode}) before answering:\n${(await readFile(join(dir, 'dockerd.log'), 'utf8')).slice(-3000)}`);
    }
    try {
      await docker.ping();
      break;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`dockerd did not answer on ${socket} within 60 s: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  return { socket, options, docker, host: `unix://${socket}` };
}
