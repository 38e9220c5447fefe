#!/usr/bin/env bash
# make-memory-fixtures.sh — tiny TCG VMs (no OS) whose RAM holds known blobs, saved with `savevm` and
# dumped with `dump-guest-memory` from the same paused state: the dump's ELF is the oracle for the
# memory views (.ram, .core) we rebuild from the snapshot's VM state.
#
#   bash scripts/make-memory-fixtures.sh [OUTDIR]      (default: fixtures/memory at the repository root)
#
# Up to date (OUTDIR/.stamp = hash of this script, the QMP helper and the QEMU version): exits at once.
# Otherwise builds into a sibling temporary folder and swaps it into place.
#
# Each VM folder holds disk.qcow2 (snapshot "s1" with VM state), dump.elf (dump-guest-memory, holes dug
# so it stays small on disk), blobs.json (what was loaded where) and qemu.log; OUTDIR/manifest.json
# lists the VMs with their machine options.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
HELPER="$SCRIPT_DIR/fixtures/fixtures.py"
FIXTURE_NAME=make-memory-fixtures
. "$SCRIPT_DIR/lib/fixture-build.sh"
export PYTHONDONTWRITEBYTECODE=1 LC_ALL=C

fixture_need "apt-get install qemu-utils qemu-system-x86 python3" qemu-img qemu-system-x86_64 python3 flock fallocate
[[ -f $HELPER ]] || die "missing helper $HELPER"

QEMU_VERSION=$(qemu-system-x86_64 --version | head -n1)
STAMP=$(fixture_stamp "$SCRIPT_DIR/make-memory-fixtures.sh" "$HELPER" <<<"$QEMU_VERSION")
fixture_begin "$(realpath -m "${1:-$REPO_ROOT/fixtures/memory}")"
trap 'rm -rf "$BUILD"' EXIT
echo "make-memory-fixtures: building into $OUTDIR ($QEMU_VERSION)"

M=$((1024 * 1024))
G=$((1024 * M))

# blob FILE SEED SIZE NAME ADDR: a tag line naming the blob, then seeded pseudo-random bytes.
blob() {
  python3 - "$@" <<'EOF'
import random, sys
path, seed, size, name, addr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
tag = ("QCOWMOUNT-MEMORY %s at %s\n" % (name, addr)).encode()
rng = random.Random(seed)
body = bytes(rng.getrandbits(8) for _ in range(size - len(tag)))
open(path, "wb").write(tag + body)
EOF
}

# vm NAME CLUSTER RUN-SECONDS MACHINE MEM EXTRA-ARGS... -- BLOB-SPECS (name:seed:size:addr)...
# No OS: starts paused (-S) with the loader's blobs in RAM; with RUN-SECONDS > 0 SeaBIOS runs that long
# (it shadows the ROMs into RAM and sets up SMRAM, as in any booted guest) and is stopped again. Then
# savevm s1 and dump-guest-memory of the same paused state.
vm() {
  local name=$1 cluster=$2 run=$3 machine=$4 mem=$5; shift 5
  local extra=()
  while [[ $1 != -- ]]; do extra+=("$1"); shift; done
  shift
  local dir="$BUILD/$name"
  mkdir -p "$dir"
  qemu-img create -q -f qcow2 -o "cluster_size=$cluster" "$dir/disk.qcow2" 64M
  local loaders=() specs=() spec bname seed size addr
  for spec in "$@"; do
    IFS=: read -r bname seed size addr <<<"$spec"
    blob "$dir/$bname.bin" "$seed" "$size" "$bname" "$addr"
    loaders+=(-device "loader,file=$dir/$bname.bin,addr=$addr,force-raw=on")
    specs+=("{\"name\":\"$bname\",\"file\":\"$bname.bin\",\"size\":$size,\"address\":$((addr))}")
  done
  : >"$dir/script.qmp"
  if [[ $run != 0 ]]; then printf '{"execute":"cont"}\nsleep %s\n{"execute":"stop"}\n' "$run" >"$dir/script.qmp"; fi
  cat >>"$dir/script.qmp" <<EOF
hmp savevm s1
hmp dump-guest-memory $dir/dump.elf
hmp info mtree -f
hmp info ramblock
EOF
  timeout --foreground 300 python3 "$HELPER" qmp "$dir/script.qmp" -- qemu-system-x86_64 -nodefaults \
    -display none -S -machine "$machine,accel=tcg" -m "$mem" "${extra[@]}" \
    -drive "file=$dir/disk.qcow2,if=none,id=d0,format=qcow2" "${loaders[@]}" >"$dir/qemu.log" 2>&1 ||
    { cat "$dir/qemu.log" >&2; die "$name: QEMU failed"; }
  fallocate --dig-holes "$dir/dump.elf"
  rm -f "$dir/script.qmp"
  local IFS=,
  printf '{"name":"%s","cluster_size":%d,"ran_seconds":%s,"machine":"%s","memory":"%s","options":"%s","blobs":[%s]}\n' \
    "$name" "$cluster" "$run" "$machine" "$mem" "${extra[*]}" "${specs[*]}" >"$dir/vm.json"
  echo "make-memory-fixtures: $name done ($(($(date +%s) - FIXTURE_T0)) s)"
}

# pc (i440fx), no split, several RAM blocks (VGA adds vga.vram and its ROM), 64 KiB clusters, SeaBIOS ran.
vm pc-64m 65536 1.5 pc 64M -device VGA -- \
  low:1:65536:0x200000 odd:2:5000:0x1234567 top:3:65536:0x3ff0000
# pc with max-ram-below-4g: split at 32 MiB, the rest from 4 GiB (the stream does not record it).
vm pc-below32m 65536 0 pc,max-ram-below-4g=32M 64M -- \
  low:4:65536:0x100000 high:5:65536:0x100100000
# q35, 2816 MiB: QEMU's own rule splits at 2 GiB; 768 MiB above 4 GiB; 4 KiB clusters, SeaBIOS ran.
vm q35-split 4096 1.5 q35 2816M -- \
  low:6:65536:0x1000000 high:7:65536:0x101000123 last:8:4096:0x12ffff000
# pc, 3584 MiB: split at 3 GiB; then the image is resized (the VM state moves with the old size).
vm pc-split-resized 65536 0 pc 3584M -- \
  low:9:65536:0x1000000 high:10:65536:0x110000000
qemu-img resize -q "$BUILD/pc-split-resized/disk.qcow2" 200M

python3 - "$BUILD" <<'EOF'
import json, os, sys
build = sys.argv[1]
vms = [json.load(open(os.path.join(build, d, "vm.json"))) for d in sorted(os.listdir(build)) if os.path.isfile(os.path.join(build, d, "vm.json"))]
json.dump({"vms": vms}, open(os.path.join(build, "manifest.json"), "w"), indent=1)
EOF
fixture_finish
