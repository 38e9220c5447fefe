#!/usr/bin/env bash
# make-partition-fixtures.sh — qcow2 images holding partition tables made by sfdisk/sgdisk, QEMU's raw
# output of each view, and `sfdisk --json` of that raw output (the oracles), plus OUTDIR/manifest.json.
#
#   bash scripts/make-partition-fixtures.sh [OUTDIR]     (default: fixtures/partitions/)
#
# Up to date (OUTDIR/.stamp = hash of this script and the tool versions): exits at once. Otherwise
# builds in a sibling temporary folder and swaps it into place. Needs root for `losetup -b 4096` (the
# 4096-byte-sector GPT is made and read back through a loop device with that logical block size).
#
#   mbr      2 primaries (1 bootable), extended 3 with logicals 5 (ext4 holding hello.txt) and 6
#   gpt512   sgdisk, named entries 1, 2, 3 and 5 (entry 4 empty)
#   gpt4k    sfdisk on a 4096-byte-sector loop device
#   repart   MBR, snapshot "before-repartition", then the active disk rewritten as a GPT plus a write
#   diff, diff-el2   known writes between snapshots s1, s2 and the active disk (for qcow-diff)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
FIXTURE_NAME=make-partition-fixtures
. "$SCRIPT_DIR/lib/fixture-build.sh"
export LC_ALL=C

fixture_need "apt-get install qemu-utils fdisk gdisk e2fsprogs jq" qemu-img qemu-io sfdisk sgdisk losetup mkfs.ext4 jq flock sha256sum
STAMP=$(fixture_stamp "$SCRIPT_DIR/make-partition-fixtures.sh" < <(qemu-img --version | head -n1; sfdisk --version; sgdisk --version | head -n1))
fixture_begin "$(realpath -m "${1:-$REPO_ROOT/fixtures/partitions}")"
LOOPS=()
cleanup() {
  local l
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$BUILD"
}
trap cleanup EXIT
echo "make-partition-fixtures: building into $OUTDIR"
cd "$BUILD"
mkdir -p .work
VIEWS=()  # one JSON object per view, for the manifest

loop_4k() { # FILE -> read-only loop device with 4096-byte logical sectors
  local dev
  dev=$(losetup -f --show -r -b 4096 "$1")
  LOOPS+=("$dev")
  echo "$dev"
}
detach() {
  losetup -d "$1"
  local kept=() l
  for l in "${LOOPS[@]}"; do [[ $l == "$1" ]] || kept+=("$l"); done
  LOOPS=("${kept[@]}")
}

# QEMU's raw bytes of one view of IMAGE (active, or a snapshot by name) and sfdisk's reading of them.
oracle() { # NAME IMAGE VIEW SNAPSHOT SECTOR_SIZE
  local name=$1 image=$2 view=$3 snap=$4 ss=$5 raw sf
  if [[ $view == active ]]; then
    raw="$name/active.raw"
    qemu-img convert -O raw "$image" "$raw"
  else
    raw="$name/snap-$snap.raw"
    cp "$image" .work/revert.qcow2
    qemu-img snapshot -a "$snap" .work/revert.qcow2
    qemu-img convert -O raw .work/revert.qcow2 "$raw"
    rm -f .work/revert.qcow2
  fi
  sf="${raw%.raw}.sfdisk.json"
  if [[ $ss == 4096 ]]; then
    local dev
    dev=$(loop_4k "$raw")
    sfdisk --json "$dev" >"$sf"
    detach "$dev"
  else
    sfdisk --json "$raw" >"$sf"
  fi
  VIEWS+=("$(jq -cn --arg name "$name" --arg image "$image" --arg view "$view" --arg snap "$snap" --arg raw "$raw" \
    --arg sf "$sf" --argjson ss "$ss" --argjson size "$(stat -c %s "$raw")" \
    '{name: $name, image: $image, view: $view, raw: $raw, sfdisk: $sf, sectorSize: $ss, size: $size}
     + (if $snap == "" then {} else {snapshot: $snap} end)')")
}

# --- mbr: primaries 1 (bootable) and 2, extended 3, logicals 5 (ext4 with a known file) and 6 -------
mkdir -p mbr .work/ext4-root
printf 'partition fixture: a file inside logical partition 5\n' >.work/ext4-root/hello.txt
head -c 300000 /dev/urandom >.work/ext4-root/random.bin
HELLO_SHA=$(sha256sum <.work/ext4-root/hello.txt | cut -d' ' -f1)
RANDOM_SHA=$(sha256sum <.work/ext4-root/random.bin | cut -d' ' -f1)
truncate -s 32M .work/mbr.img
sfdisk -q .work/mbr.img <<'EOF'
label: dos
label-id: 0x0badcafe
start=2048, size=4096, type=83, bootable
start=6144, size=2048, type=c
start=10240, size=40960, type=5
start=12288, size=8192, type=83
start=22528, size=4096, type=82
EOF
mkfs.ext4 -q -F -L logical5 -d .work/ext4-root .work/ext4.img 4M
dd if=.work/ext4.img of=.work/mbr.img bs=512 seek=12288 conv=notrunc status=none
printf 'primary 1\n' | dd of=.work/mbr.img bs=512 seek=2048 conv=notrunc status=none
qemu-img convert -O qcow2 .work/mbr.img mbr/mbr.qcow2
oracle mbr mbr/mbr.qcow2 active "" 512

# --- gpt512: sgdisk with named entries, entry 4 left empty --------------------------------------
mkdir -p gpt512
truncate -s 32M .work/gpt512.img
sgdisk -U 11111111-2222-3333-4444-555555555555 \
  -n 1:2048:+4M -t 1:EF00 -c 1:"EFI System" -u 1:A0000000-0000-0000-0000-000000000001 -A 1:set:2 \
  -n 2:0:+8M -t 2:8300 -c 2:root \
  -n 3:0:+2M -t 3:8200 -c 3:swap \
  -n 5:0:+1M -t 5:0700 -c 5:"Données" \
  .work/gpt512.img >/dev/null
qemu-img convert -O qcow2 .work/gpt512.img gpt512/gpt512.qcow2
oracle gpt512 gpt512/gpt512.qcow2 active "" 512

# --- gpt4k: 4096-byte logical sectors -----------------------------------------------------------
mkdir -p gpt4k
truncate -s 32M .work/gpt4k.img
DEV=$(losetup -f --show -b 4096 .work/gpt4k.img)
LOOPS+=("$DEV")
sfdisk -q --no-reread --no-tell-kernel "$DEV" <<'EOF' >/dev/null
label: gpt
start=256, size=1024, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System"
start=1280, size=2048, name="data 4k"
EOF
detach "$DEV"
qemu-img convert -O qcow2 .work/gpt4k.img gpt4k/gpt4k.qcow2
oracle gpt4k gpt4k/gpt4k.qcow2 active "" 4096

# --- repart: snapshot of an MBR disk, then the active disk repartitioned as GPT ----------------
mkdir -p repart
truncate -s 32M .work/repart-mbr.img
sfdisk -q .work/repart-mbr.img <<'EOF'
label: dos
label-id: 0x00c0ffee
start=2048, size=20480, type=83
start=22528, size=20480, type=7
EOF
qemu-img convert -O qcow2 .work/repart-mbr.img repart/repart.qcow2
qemu-io -f qcow2 -c 'write -q -P 0x11 2M 64k' repart/repart.qcow2 >/dev/null
qemu-img snapshot -c before-repartition repart/repart.qcow2
truncate -s 32M .work/repart-gpt.img
sgdisk -n 1:2048:+16M -t 1:8300 -c 1:new-root -n 2:0:0 -t 2:0700 -c 2:new-data .work/repart-gpt.img >/dev/null
dd if=.work/repart-gpt.img of=.work/repart-head.img bs=1M count=1 status=none
dd if=.work/repart-gpt.img of=.work/repart-tail.img bs=512 skip=$((32 * 2048 - 33)) status=none
qemu-io -f qcow2 -c "write -q -s .work/repart-head.img 0 1M" \
  -c "write -q -s .work/repart-tail.img $((32 * 1024 * 1024 - 33 * 512)) $((33 * 512))" \
  -c 'write -q -P 0x22 20M 128k' repart/repart.qcow2 >/dev/null
oracle repart repart/repart.qcow2 active "" 512
oracle repart repart/repart.qcow2 snapshot before-repartition 512

# --- diff, diff-el2: known writes between snapshots (forensic-formats.md §5.1) for qcow-diff -------
# s1 -> s2: new data at 1M, write -z 2M+128k, discard 3M, identical rewrite at 4M, 4 KiB at 7M,
# compressed at 13M; s2 -> active: 6M, and 4 KiB over the compressed cluster at 12M.
for variant in diff diff-el2; do
  mkdir -p "$variant"
  img="$variant/$variant.qcow2"
  opts=cluster_size=65536
  [[ $variant == diff-el2 ]] && opts+=,extended_l2=on
  qemu-img create -q -f qcow2 -o "$opts" "$img" 16M
  qemu-io -f qcow2 -c 'write -q -P 1 0 8M' -c 'write -q -c -P 9 12M 64k' "$img" >/dev/null
  qemu-img snapshot -c s1 "$img"
  qemu-io -f qcow2 -c 'write -q -P 2 1M 64k' -c 'write -q -z 2M 128k' -c 'discard -q 3M 64k' -c 'write -q -P 1 4M 64k' \
    -c 'write -q -P 5 7M 4k' -c 'write -q -c -P 3 13M 64k' "$img" >/dev/null
  qemu-img snapshot -c s2 "$img"
  qemu-io -f qcow2 -c 'write -q -P 4 6M 64k' -c 'write -q -P 7 12M 4k' "$img" >/dev/null
  for view in s1 s2 active; do
    if [[ $view == active ]]; then
      qemu-img convert -O raw "$img" "$variant/active.raw"
    else
      cp "$img" .work/revert.qcow2
      qemu-img snapshot -a "$view" .work/revert.qcow2
      qemu-img convert -O raw .work/revert.qcow2 "$variant/snap-$view.raw"
    fi
  done
done

rm -rf .work
printf '%s\n' "${VIEWS[@]}" | jq -s --arg hello "$HELLO_SHA" --arg random "$RANDOM_SHA" \
  '{views: ., ext4: {name: "mbr", partition: 5, files: {"hello.txt": $hello, "random.bin": $random}},
    diff: [{name: "diff", image: "diff/diff.qcow2"}, {name: "diff-el2", image: "diff-el2/diff-el2.qcow2"}]
      | map(. + {views: {s1: "\(.name)/snap-s1.raw", s2: "\(.name)/snap-s2.raw", active: "\(.name)/active.raw"}})}' >manifest.json
fixture_finish
