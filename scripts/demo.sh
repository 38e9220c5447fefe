#!/usr/bin/env bash
# The main job for a newcomer: install what is needed, build, make the sample image, mount it, list it.
# Usage: bash scripts/demo.sh [MOUNTPOINT]   (default /tmp/qcow-mount-demo; run as root, or with FUSE access)
set -euo pipefail
cd "$(dirname "$0")/.."
mnt=${1:-/tmp/qcow-mount-demo}

need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v fusermount3 >/dev/null || need+=(fuse3)
ldconfig -p | grep -q 'libfuse\.so\.2 ' || need+=(libfuse2)
# The native FUSE back-end (built by npm ci): libfuse 3 headers, pkg-config and a C toolchain.
pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev pkg-config)
pkg-config --exists liburing 2>/dev/null || need+=(liburing-dev)
command -v make >/dev/null && command -v cc >/dev/null || need+=(make gcc)
if [ ${#need[@]} -gt 0 ]; then
  echo "demo: installing ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run build --silent

bash scripts/make-sample.sh sample
mkdir -p "$mnt"
if grep -qs " $mnt fuse" /proc/mounts; then node dist/cli/qcow-mount.js -u "$mnt"; fi
node dist/cli/qcow-mount.js sample/disk.qcow2 "$mnt"

echo; echo "\$ ls -l $mnt $mnt/snapshots"
ls -l "$mnt" "$mnt/snapshots"
echo
echo "Mounted. Try, as root:"
echo "  mkdir -p /tmp/guest && mount -o loop,ro $mnt/snapshots/clean-install.p1 /tmp/guest && ls -R /tmp/guest/home"
echo "  sha256sum $mnt/active.raw        # equals: qemu-img convert -O raw sample/disk.qcow2 x.raw && sha256sum x.raw"
echo "Unmount with:  node dist/cli/qcow-mount.js -u $mnt"
