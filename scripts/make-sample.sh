#!/usr/bin/env bash
# Makes a small sample qcow2 image: an MBR disk with one ext4 partition holding a few files, and two
# internal snapshots taken before files changed. Usage: scripts/make-sample.sh [DIR] (default ./sample).
set -euo pipefail
dir=${1:-sample}
for tool in qemu-img qemu-io mkfs.ext4 sfdisk; do
  command -v "$tool" >/dev/null || { echo "make-sample: $tool is missing (apt-get install qemu-utils e2fsprogs fdisk)" >&2; exit 1; }
done
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

disk_mib=32
part_start=2048          # sectors: the partition starts at 1 MiB
part_sectors=$(( (disk_mib - 1) * 2048 ))

# Builds the whole raw disk $2 from the folder $1: partition table, then an ext4 filled from the folder.
build_raw() {
  truncate -s ${disk_mib}M "$2"
  printf 'label: dos\nstart=%d, size=%d, type=83\n' $part_start $part_sectors | sfdisk -q "$2"
  truncate -s $(( part_sectors * 512 )) "$work/part.img"
  mkfs.ext4 -q -F -E root_owner=0:0 -L sample -U 5a3f3c1e-0000-4000-8000-000000000001 -d "$1" "$work/part.img"
  dd if="$work/part.img" of="$2" bs=1M seek=1 conv=notrunc status=none
  rm -f "$work/part.img"
}

# Writes the partition of raw disk $1 over the qcow2 image (a guest writing its disk).
write_partition() {
  dd if="$1" of="$work/part.bin" bs=1M skip=1 status=none
  qemu-io -f qcow2 -c "write -q -s $work/part.bin $(( part_start * 512 )) $(( part_sectors * 512 ))" "$dir/disk.qcow2"
}

mkdir -p "$work/v1/etc" "$work/v1/home/alice"
echo "version 1.0" > "$work/v1/etc/release"
echo "hello from the clean install" > "$work/v1/home/alice/notes.txt"
seq 1 20000 > "$work/v1/home/alice/numbers.txt"
build_raw "$work/v1" "$work/v1.raw"
rm -f "$dir/disk.qcow2"
qemu-img convert -f raw -O qcow2 "$work/v1.raw" "$dir/disk.qcow2"
qemu-img snapshot -c clean-install "$dir/disk.qcow2"

cp -a "$work/v1" "$work/v2"
echo "version 1.1" > "$work/v2/etc/release"
echo "a report written after the install" > "$work/v2/home/alice/report.txt"
build_raw "$work/v2" "$work/v2.raw"
write_partition "$work/v2.raw"
qemu-img snapshot -c before-upgrade "$dir/disk.qcow2"

cp -a "$work/v2" "$work/v3"
echo "version 2.0" > "$work/v3/etc/release"
rm "$work/v3/home/alice/notes.txt"
build_raw "$work/v3" "$work/v3.raw"
write_partition "$work/v3.raw"

echo "sample image: $dir/disk.qcow2 (ext4 partition at offset $(( part_start * 512 )); snapshots clean-install, before-upgrade)"
