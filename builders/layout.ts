// Every file name under out/<cluster>/ comes from here, so the output format reads in one place.
import { join } from 'node:path';

export const layout = {
  /** out/<cluster>/ */
  clusterDir: (outDir: string, cluster: string) => join(outDir, cluster),
  manifest: 'manifest.json',
  checksums: 'SHA256SUMS',
  checksumsSignature: 'SHA256SUMS.asc',

  /** Disk images, one per disk-booted node. */
  image: (node: string) => `images/${node}.img`,
  bmap: (node: string) => `images/${node}.img.bmap`,

  /** First-boot configs (secret: they carry keys and tokens once Kubernetes is bundled). */
  ignition: (node: string) => `configs/${node}.ign`,
  cloudInit: (node: string, file: 'user-data' | 'meta-data' | 'network-config') => `configs/${node}/${file}`,

  /** The static PXE tree. */
  pxeDir: 'pxe',
  pxeBootScript: 'pxe/boot.ipxe',
  /** iPXE expands ${mac:hexhyp} to 52-54-00-12-34-56. */
  pxeNodeScript: (mac: string) => `pxe/nodes/${macHyphen(mac)}.ipxe`,
  pxeNodeCpio: (mac: string) => `pxe/nodes/${macHyphen(mac)}.cpio.gz`,
  pxeAsset: (arch: string, version: string, file: string) => `pxe/assets/flatcar/${arch}/${version}/${file}`,
  pxeIpxeBinary: (file: string) => `pxe/ipxe/${file}`,
  dnsmasqConf: 'pxe/dnsmasq.conf',
  dnsmasqProxyConf: 'pxe/dnsmasq-proxy.conf',

  /** The registry mirror: distribution (registry:2) filesystem storage; serve with rootdirectory = this dir. */
  registryDir: 'registry',
  /** Per-arch OCI image layout archives for `ctr -n k8s.io images import --platform linux/<arch>`. */
  ociArchive: (arch: string) => `oci/${arch}.oci.tar`,

  /** Build-time PKI (secret, 0700 dir, 0600 files). */
  pkiDir: 'pki',

  /** Where `bramble fetch` records what it resolved, beside the cluster.toml. */
  lockFile: 'bramble.lock',
} as const;

export function macHyphen(mac: string): string {
  return mac.toLowerCase().replaceAll(':', '-');
}
