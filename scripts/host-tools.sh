#!/usr/bin/env bash
# Installs the Debian packages bramble's tests and builds call, when they are missing.
# As root on Debian it runs apt-get; otherwise it prints the exact install line and fails.
set -euo pipefail
packages=(
  bzip2 lbzip2 zstd xz-utils zip unzip cpio gdisk fdisk
  mtools dosfstools btrfs-progs e2fsprogs squashfs-tools bmap-tools
  busybox-static grub-common grub-efi-amd64-bin
  qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 ipxe ipxe-qemu
  dnsmasq-base skopeo docker-registry containerd docker.io openssl gnupg iproute2 cloud-init
  nftables systemd apache2-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "host-tools: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "host-tools: missing packages. Install them with:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 4
fi
