#!/usr/bin/env bash
# make-fixtures.sh — build qcow2 test images with QEMU's own tools, plus the raw bytes QEMU gives
# for every view of each image (the oracles), plus OUTDIR/manifest.json describing them.
#
#   bash scripts/make-fixtures.sh [OUTDIR]        (default: fixtures/ at the repository root)
#
# Up to date (OUTDIR/.stamp = hash of this script, scripts/fixtures/* and the QEMU version):
# exits at once. Otherwise builds into a sibling temporary folder and swaps it into place, so an
# interrupted run never leaves a half-built set. FIXTURE_JOBS=N sets parallelism (default nproc).
#
# QEMU is the oracle, never our code:
#   active view      qemu-img convert -O raw IMAGE active.raw
#   snapshot ID      cp IMAGE copy (same folder); qemu-img snapshot -a ID copy; qemu-img convert
#                    -O raw copy snap-ID-NAME.raw   (size = the snapshot's own disk size)
#   vm state         copy reverted as above, qemu-img resize so the disk covers the vm-state area
#                    of the snapshot's L1 space, convert, cut [vmstate_offset, +vm_state_size);
#                    cross-checked against scripts/fixtures/fixtures.py vmstate (an independent
#                    L1/L2 walk); see each vmstate view's "oracle_source".
# Next to each image: info.json (qemu-img info --output=json --backing-chain), map.json
# (qemu-img map --output=json).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
HELPER="$SCRIPT_DIR/fixtures/fixtures.py"
FIXTURE_NAME=make-fixtures
. "$SCRIPT_DIR/lib/fixture-build.sh"
export PYTHONDONTWRITEBYTECODE=1 LC_ALL=C

fixture_need "install QEMU: apt-get install qemu-utils qemu-system-x86" qemu-img qemu-io qemu-system-x86_64 python3 flock
[[ -f $HELPER ]] || die "missing helper $HELPER"

QEMU_VERSION=$(qemu-img --version | head -n1)
mapfile -t HELPER_FILES < <(find "$SCRIPT_DIR/fixtures" -type f -not -path '*/__pycache__/*' | sort)
STAMP=$(fixture_stamp "$SCRIPT_DIR/make-fixtures.sh" "${HELPER_FILES[@]}" <<<"$QEMU_VERSION")
fixture_begin "$(realpath -m "${1:-$REPO_ROOT/fixtures}")"
JOB_PIDS=()
set -m # job control: each fixture job runs in its own process group, so cleanup can end all of it
cleanup() {
  local pid
  for pid in "${JOB_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$BUILD"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$BUILD/.work" "$BUILD/.logs" "$BUILD/.status" "$BUILD/.meta"
echo "make-fixtures: building into $OUTDIR ($QEMU_VERSION)"

K=1024
M=$((1024 * 1024))
T=$((1024 * 1024 * 1024 * 1024))

# ------------------------------------------------------------------------------------------------
# helpers (run inside a fixture job: cwd = the fixture's folder, $WORK = its scratch folder)

# qio [-f FMT] IMAGE CMD...   run qemu-io commands; fail on any failure it reports
qio() {
  local fmt=qcow2 out c
  if [[ $1 == -f ]]; then fmt=$2; shift 2; fi
  local img=$1; shift
  local args=()
  for c in "$@"; do args+=(-c "$c"); done
  if ! out=$(qemu-io -f "$fmt" "$img" "${args[@]}" 2>&1); then
    echo "$out" >&2; die "qemu-io failed on $img: $*"
  fi
  if grep -qiE 'fail|error|not found|invalid' <<<"$out"; then
    echo "$out" >&2; die "qemu-io reported a problem on $img: $*"
  fi
  echo "$out" | grep -v '^[0-9.]* \(bytes\|[KMGT]iB\), ' || true
}
# gen FILE SEED SIZE KIND      deterministic data (text, records, mixed, random)
gen() { python3 "$HELPER" data "$1" "$2" "$3" "$4"; }
# wdata [-f FMT] IMAGE OFFSET LENGTH SEED KIND [c]   write generated data (c: compressed write)
wdata() {
  local fmtargs=()
  if [[ $1 == -f ]]; then fmtargs=(-f "$2"); shift 2; fi
  local img=$1 off=$2 len=$3 seed=$4 kind=$5 comp=${6:-}
  local file="$WORK/data-$seed-$len-$kind.bin"
  [[ -f $file ]] || gen "$file" "$seed" "$len" "$kind"
  qio "${fmtargs[@]}" "$img" "write ${comp:+-c }-s $file $off $len"
}
create() { # create IMAGE SIZE [OPTIONS] [qemu-img create args...]
  local img=$1 size=$2 opts=${3:-}; shift 2; (($#)) && shift
  qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$@" "$img" ${size:+"$size"}
}
snap() { qemu-img snapshot -c "$2" "$1"; }
# qmp SCRIPTFILE QEMU-ARGS...  (qemu-system-x86_64 driven over QMP; see fixtures.py qmp)
qmp() {
  local script=$1; shift
  timeout --foreground 150 python3 "$HELPER" qmp "$script" -- qemu-system-x86_64 -nodefaults -display none "$@"
}
# oracle IMAGE-REL DESCRIPTION [--compare sampled] [--written JSON] [--snapshots IDS] [--extra JSON]
oracle() {
  local image=$1 desc=$2; shift 2
  python3 "$HELPER" oracle --build "$BUILD" --name "$FIXTURE" --order "$FIXTURE_ORDER" \
    --image "$image" --description "$desc" "$@"
}

# ------------------------------------------------------------------------------------------------
# fixtures: each function builds one folder $BUILD/<name>

# 1. plain writes at unaligned offsets, one snapshot, v2 and v3
fx_basic() { # compat
  local sz=$((4 * M + 1536))
  create disk.qcow2 $sz "compat=$1,cluster_size=64k"
  qio disk.qcow2 "write -P 0xa1 1000 5000" "write -P 0xb2 65000 70000" \
    "write -P 0xc3 $((3 * M + 12345)) 100000"
  wdata disk.qcow2 300001 250000 1 text
  wdata disk.qcow2 $((sz - 10000)) 10000 2 records
  snap disk.qcow2 s1
  qio disk.qcow2 "write -P 0xd4 4000 2000" "write -P 0xe5 131000 1000" "write -P 0xf6 $((sz - 600)) 600"
  wdata disk.qcow2 $((2 * M - 777)) 200000 3 mixed
  oracle "$FIXTURE/disk.qcow2" "compat=$1, 64 KiB clusters, size 4 MiB + 1536 (last cluster partial): \
pattern and text/record writes at unaligned offsets crossing clusters, snapshot s1, then COW overwrites \
(partly over s1 data) and a mixed-data write."
}

# 2. cluster sizes, writes crossing cluster and L2-table boundaries
fx_c512() {
  local sz=$((3 * M + 512))
  create disk.qcow2 $sz cluster_size=512
  wdata disk.qcow2 100000 $((1 * M)) 11 text
  qio disk.qcow2 "write -P 0x11 $((32 * K - 100)) 200" "write -P 0x22 $((64 * K - 1)) 2" \
    "write -P 0x33 $((2 * M - 300)) 70000" "write -P 0x44 $((sz - 512)) 512"
  snap disk.qcow2 s1
  wdata disk.qcow2 $((96 * K - 5)) 100000 12 mixed
  qio disk.qcow2 "write -P 0x55 $((3 * M - 32 * K - 7)) 33000"
  oracle "$FIXTURE/disk.qcow2" "v3, 512-byte clusters (an L2 table covers 32 KiB: ~97 L2 tables), \
size 3 MiB + 512: 1 MiB of text spanning ~32 L2 tables, small writes straddling 32 KiB boundaries, \
last sector written, snapshot s1, then more writes crossing L2 boundaries."
}
fx_c4k() {
  local sz=$((6 * M))
  create disk.qcow2 $sz cluster_size=4k
  wdata disk.qcow2 $((1200 * K + 3)) $((1536 * K)) 21 mixed
  qio disk.qcow2 "write -P 0x61 $((4 * M - 5)) 10" "write -P 0x62 $((2 * M - 4096)) 8192" \
    "write -P 0x63 $((sz - 100)) 100"
  snap disk.qcow2 s1
  wdata disk.qcow2 $((4 * M - 70000)) 140000 22 text
  oracle "$FIXTURE/disk.qcow2" "v3, 4 KiB clusters (an L2 table covers 2 MiB), size 6 MiB: writes \
crossing the 2 MiB and 4 MiB L2 boundaries, snapshot s1, then a text write across 4 MiB."
}
fx_c64k_l2cross() {
  local sz=$((576 * M))
  create disk.qcow2 $sz cluster_size=64k
  wdata disk.qcow2 4097 200000 31 text
  wdata disk.qcow2 $((512 * M - 100000)) 300000 32 mixed
  qio disk.qcow2 "write -P 0x71 $((512 * M - 1)) 2" "write -P 0x72 $((sz - 65536 - 10)) 65546"
  snap disk.qcow2 s1
  qio disk.qcow2 "write -P 0x73 $((512 * M - 32768)) 65536"
  oracle "$FIXTURE/disk.qcow2" "v3, 64 KiB clusters, size 576 MiB (sparse; oracles are sparse \
files): writes straddling the 512 MiB L1/L2-table boundary, near 0 and at the very end, snapshot s1, \
then an overwrite across 512 MiB. Mostly unallocated; compare is full."
}
fx_c2m() {
  local sz=$((9 * M))
  create disk.qcow2 $sz cluster_size=2M
  wdata disk.qcow2 $((2 * M - 1000)) 3000 41 text
  qio disk.qcow2 "write -P 0x81 $((4 * M - 1)) 2"
  wdata disk.qcow2 $((5 * M + 3)) $((3 * M + 100)) 42 mixed
  snap disk.qcow2 s1
  qio disk.qcow2 "write -P 0x82 $((sz - 4096)) 4096" "write -P 0x83 $((6 * M - 512)) 1024"
  oracle "$FIXTURE/disk.qcow2" "v3, 2 MiB clusters, size 9 MiB (last cluster half used): writes \
straddling 2 MiB cluster boundaries, mixed data into the last partial cluster, snapshot s1, COW \
overwrites. (An L2 table covers 512 GiB here, so no L2 boundary is crossed.)"
}

# 3. compression: convert -c, snapshot, uncompressed partial writes into compressed clusters,
#    compressed writes (write -c), snapshot, zeroing/discard of compressed clusters
fx_compressed() { # cluster-size-bytes type compat nclusters seed
  local cs=$1 type=$2 compat=$3 n=$4 seed=$5
  local sz=$((n * cs - (cs >= 4096 ? 4096 : 0))) opts="cluster_size=$cs,compat=$compat"
  [[ $type == zstd ]] && opts+=",compression_type=zstd"
  gen "$WORK/src.raw" "$seed" "$sz" mixed
  gen "$WORK/rnd.bin" $((seed + 1)) "$cs" random # one incompressible cluster (stored uncompressed)
  dd if="$WORK/rnd.bin" of="$WORK/src.raw" bs="$cs" seek=2 conv=notrunc status=none
  qemu-img convert -q -c -f raw -O qcow2 -o "$opts" "$WORK/src.raw" disk.qcow2
  snap disk.qcow2 compressed
  local q=$((cs / 4))
  qio disk.qcow2 "write -P 0x5c $((cs + cs / 3 + 3)) $q" "write -P 0x6d $((3 * cs - cs / 8)) $q"
  wdata disk.qcow2 $((4 * cs + cs / 2)) $((cs + q)) $((seed + 2)) text
  # a compressed write needs an unallocated cluster: unmap it first
  qio disk.qcow2 "write -z -u $((n / 2 * cs)) $cs"
  wdata disk.qcow2 $((n / 2 * cs)) "$cs" $((seed + 3)) text c
  snap disk.qcow2 "partly rewritten"
  qio disk.qcow2 "write -z $((n / 2 * cs + cs / 2)) $((cs / 4))" \
    "write -z $(((n - 3) * cs)) $cs" "discard $(((n - 2) * cs)) $cs" \
    "write -P 0x7e $((sz - 700)) 700"
  wdata disk.qcow2 $((cs * 3 / 2 + 5)) $((q + 77)) $((seed + 4)) records
  local l2note=""
  ((cs == 512)) && l2note=" With 512-byte clusters the compressed descriptor has a 1-bit sector count."
  oracle "$FIXTURE/disk.qcow2" "compat=$compat, $cs-byte clusters, $type compression, size $sz: \
mixed text/records/random/zero/fill data converted with qemu-img convert -c (cluster 2 is random, \
so stored uncompressed; zero runs unallocated); snapshot 'compressed'; uncompressed partial writes \
into compressed clusters (COW), a write -c compressed cluster at cluster $((n / 2)); snapshot \
'partly rewritten'; then write -z inside and over compressed clusters, discard of a compressed \
cluster, more partial writes.$l2note"
}

# 4. extended L2 (64 KiB clusters = 32 subclusters of 2 KiB)
el2_ops() { # image seed; subcluster-granular writes with allocated, zero and unallocated mixed
  local img=$1 seed=$2 c=65536 s=2048
  qio "$img" "write -P 0x11 $((c)) 4096" "write -z $((c + 3 * s)) $s" \
    "write -P 0x22 $((c + 10500)) 3000" "write -z $((c + 20 * s)) $((3 * s))" \
    "write -P 0x23 $((c + 31 * s + 100)) 1000" \
    "write -z -u $((3 * c)) $c" "write -P 0x33 $((3 * c + 7 * s + 100)) 100" \
    "write -P 0x44 $((3 * c - 1000)) 2000"
  wdata "$img" $((5 * c)) $c "$seed" text
  qio "$img" "discard $((5 * c + 8 * K)) $((4 * K))" "write -z -u $((5 * c + 16 * K)) $((2 * K))"
  snap "$img" s1
  # after s1: the same kind of mix in clusters s1 does not share ...
  qio "$img" "write -P 0x55 $((20 * c + 2 * s)) $((2 * s))" "write -z $((20 * c + 9 * s)) $((3 * s))" \
    "write -P 0x56 $((20 * c + 17 * s + 1)) 10" "write -z -u $((20 * c + 25 * s)) $s" \
    "write -z $((21 * c + 31 * s)) $s" "write -P 0x57 $((22 * c - 300)) 600"
  # ... and COW of clusters it does share
  qio "$img" "write -P 0x58 $((c + 29 * s)) $s" "write -z $((5 * c + 20 * K)) 3000" \
    "write -P 0x66 $((9 * c + 5)) $((2 * c))"
  wdata "$img" $((12 * c - 3333)) $((c + 5000)) $((seed + 1)) mixed
}
fx_el2() {
  create disk.qcow2 $((4 * M)) extended_l2=on,cluster_size=64k
  el2_ops disk.qcow2 51
  oracle "$FIXTURE/disk.qcow2" "v3 extended_l2=on, 64 KiB clusters (32 x 2 KiB subclusters), no \
backing: clusters mixing allocated, zero (write -z) and unallocated subclusters, unaligned \
sub-subcluster writes, write -z -u of whole clusters then a subcluster write inside, discard of \
subclusters, snapshot s1, more subcluster writes."
}
fx_el2_backing() {
  create base.qcow2 $((4 * M)) cluster_size=64k
  wdata base.qcow2 0 $((4 * M)) 61 text
  create disk.qcow2 "" extended_l2=on,cluster_size=64k -b base.qcow2 -F qcow2
  el2_ops disk.qcow2 62
  oracle "$FIXTURE/disk.qcow2" "v3 extended_l2=on, 64 KiB clusters, over a qcow2 backing file \
(base.qcow2, 4 MiB of text, backing_fmt qcow2): same subcluster mix as el2-c64k, so unallocated \
subclusters show backing data and zero subclusters hide it; snapshot s1."
}
fx_el2_compressed() { # type seed
  local opts="extended_l2=on,cluster_size=64k"
  [[ $1 == zstd ]] && opts+=",compression_type=zstd"
  gen "$WORK/src.raw" "$2" $((4 * M)) mixed
  qemu-img convert -q -c -f raw -O qcow2 -o "$opts" "$WORK/src.raw" disk.qcow2
  snap disk.qcow2 compressed
  el2_ops disk.qcow2 $(($2 + 1))
  qio disk.qcow2 "write -z -u $((40 * 65536)) 65536"
  wdata disk.qcow2 $((40 * 65536)) 65536 $(($2 + 2)) text c
  oracle "$FIXTURE/disk.qcow2" "v3 extended_l2=on, 64 KiB clusters, $1 compression: mixed data \
via qemu-img convert -c, snapshot 'compressed', then the el2-c64k subcluster writes on top of \
compressed clusters (which become normal clusters with subcluster bitmaps), snapshot s1, a write -c \
compressed cluster at 2.5 MiB."
}
fx_el2_c2m_rawbacking() {
  gen base.raw 71 3000000 mixed # odd size: not a multiple of 512
  local c=$((2 * M)) s=$((64 * K))
  create disk.qcow2 $((8 * M)) extended_l2=on,cluster_size=2M -b base.raw -F raw
  qio disk.qcow2 "write -P 0x91 $((s + 100)) 1000" "write -z $((3 * s)) $((2 * s))" \
    "write -P 0x92 $((c - s - 5)) $((s + 10))" "write -z $((c + 5 * s)) $s" \
    "write -P 0x93 $((3000000 - 3000)) 6000" "write -z -u $((3 * c)) $c" \
    "write -P 0x94 $((3 * c + 31 * s)) $s"
  snap disk.qcow2 s1
  wdata disk.qcow2 $((c + 17 * s + 1)) $((3 * s)) 72 text
  oracle "$FIXTURE/disk.qcow2" "v3 extended_l2=on, 2 MiB clusters (32 x 64 KiB subclusters), \
size 8 MiB, over a raw backing file of 3000000 bytes (not a multiple of 512; reads past its end \
are zeros): subcluster writes, zero subclusters, a write straddling the backing file's end, \
write -z -u of a whole cluster then a subcluster write into it, snapshot s1."
}

# 5. backing chains (relative names)
fx_chain() {
  gen base.raw 81 $((4 * M)) mixed
  create mid.qcow2 "" "" -b base.raw -F raw
  qio mid.qcow2 "write -P 0xa1 $((100 * K + 1)) 70000" "write -z $((1 * M)) $((128 * K))" \
    "write -z $((2 * M + 1000)) 1000"
  wdata mid.qcow2 $((3 * M - 5000)) 200000 82 text
  create top.qcow2 "" "" -b mid.qcow2 -F qcow2
  qio top.qcow2 "write -P 0xb1 $((130 * K)) 5000" "write -P 0xb2 $((1 * M + 64 * K - 10)) 20"
  snap top.qcow2 t1
  qio top.qcow2 "discard $((2 * M)) $((64 * K))" "write -P 0xb3 $((4 * M - 512)) 512"
  wdata top.qcow2 $((512 * K + 7)) 100000 83 records
  oracle "$FIXTURE/top.qcow2" "Chain raw <- qcow2 <- qcow2, relative names in one folder: \
base.raw (4 MiB mixed data) <- mid.qcow2 (-b base.raw -F raw; writes, write -z hiding base data) \
<- top.qcow2 (-b mid.qcow2 -F qcow2; writes, snapshot t1, discard, more writes)."
}
fx_chain_subdir() {
  mkdir -p backing/base vm
  create backing/base/base.qcow2 $((4 * M)) cluster_size=4k
  wdata backing/base/base.qcow2 0 $((4 * M)) 91 mixed
  (cd backing && create mid.qcow2 "" "" -b base/base.qcow2 -F qcow2)
  qio backing/mid.qcow2 "write -P 0xc1 $((64 * K - 100)) 300"
  (cd vm && create top.qcow2 "" "" -b ../backing/mid.qcow2 -F qcow2)
  qio vm/top.qcow2 "write -P 0xc2 $((1 * M + 3)) 100000"
  snap vm/top.qcow2 t1
  qio vm/top.qcow2 "write -P 0xc3 $((1 * M + 50000)) 100000"
  oracle "$FIXTURE/vm/top.qcow2" "Chain across folders: vm/top.qcow2 names '../backing/mid.qcow2', \
which names 'base/base.qcow2' (resolved against backing/, the folder of mid.qcow2): each relative \
name is relative to the image that names it. base.qcow2 has 4 KiB clusters; snapshot t1 in top."
}
fx_chain_short() {
  gen base.raw 101 1000000 text # 1000000 bytes: ends inside a 512-byte sector
  create mid.qcow2 $((2 * M + 512)) "" -b base.raw -F raw
  qio mid.qcow2 "write -P 0xd1 999000 2000" "write -P 0xd2 $((2 * M + 512 - 1000)) 1000"
  create top.qcow2 $((4 * M + 1024)) cluster_size=4k -b mid.qcow2 -F qcow2
  qio top.qcow2 "write -P 0xd3 $((2 * M)) 5000" "write -P 0xd4 $((900 * K)) 200000"
  snap top.qcow2 t1
  qio top.qcow2 "write -P 0xd5 $((4 * M + 1024 - 3000)) 3000"
  oracle "$FIXTURE/top.qcow2" "Backing files shorter than their overlays: base.raw is 1000000 \
bytes (ends mid-sector) <- mid.qcow2 is 2 MiB + 512 <- top.qcow2 (4 KiB clusters) is 4 MiB + 1024. \
Reads past a backing file's end are zeros; a mid write straddles base.raw's end; snapshot t1."
}
fx_chain_nofmt() {
  gen base.raw 111 $((3 * M)) mixed
  : >mid.qcow2
  : >top.qcow2
  cat >"$WORK/create.qmp" <<EOF
{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"fm","filename":"mid.qcow2"}}
{"execute":"blockdev-create","arguments":{"job-id":"cm","options":{"driver":"qcow2","file":"fm","size":$((3 * M)),"version":"v2","backing-file":"base.raw"}}}
waitjob cm
{"execute":"blockdev-del","arguments":{"node-name":"fm"}}
{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"ft","filename":"top.qcow2"}}
{"execute":"blockdev-create","arguments":{"job-id":"ct","options":{"driver":"qcow2","file":"ft","size":$((4 * M)),"version":"v3","backing-file":"mid.qcow2"}}}
waitjob ct
{"execute":"blockdev-del","arguments":{"node-name":"ft"}}
EOF
  qmp "$WORK/create.qmp" -machine none
  qio mid.qcow2 "write -P 0xe1 $((1 * M - 3)) 6"
  qio top.qcow2 "write -P 0xe2 $((2 * M + 10)) 70000"
  snap top.qcow2 t1
  qio top.qcow2 "write -P 0xe3 $((3 * M - 100)) 200"
  local fmts
  fmts=$(qemu-img info --output=json --backing-chain top.qcow2 | grep -c '"backing-filename-format"' || true)
  [[ $fmts == 0 ]] || die "chain-nofmt: a backing format was recorded"
  oracle "$FIXTURE/top.qcow2" "No backing format recorded anywhere (made with QMP blockdev-create, \
since qemu-img 7.2 refuses -b without -F): top.qcow2 (v3, 4 MiB) -> 'mid.qcow2' (v2, 3 MiB, \
qcow2 by probing) -> 'base.raw' (raw by probing). Snapshot t1 in top."
}
fx_chain_backing_snaps() {
  create base.qcow2 $((6 * M)) cluster_size=64k
  wdata base.qcow2 0 $((2 * M)) 121 text
  snap base.qcow2 b1
  qio base.qcow2 "write -P 0xf1 $((1 * M)) $((2 * M))"
  snap base.qcow2 b2
  qio base.qcow2 "write -P 0xf2 $((5 * M)) $((1 * M))" "write -P 0xf3 100 100"
  snap base.qcow2 b3
  wdata base.qcow2 $((512 * K)) $((1 * M)) 122 records
  create top.qcow2 $((4 * M)) "" -b base.qcow2 -F qcow2
  qio top.qcow2 "write -P 0xf4 $((3 * M)) 4096"
  snap top.qcow2 t1
  qio top.qcow2 "write -P 0xf5 0 512"
  oracle "$FIXTURE/top.qcow2" "Overlay over a qcow2 backing file that has its own snapshots (b1, b2, \
b3 with different data) and further active writes: reads fall through to the backing file's ACTIVE \
state only. The overlay (4 MiB) is shorter than its backing file (6 MiB). Snapshot t1 in top."
}

# 6. external data file
fx_datafile() { # raw on/off
  create disk.qcow2 $((4 * M)) "data_file=disk.data,data_file_raw=$1"
  qio disk.qcow2 "write -P 0x17 0 70000" "write -P 0x18 $((1 * M - 100)) 300"
  wdata disk.qcow2 $((200 * K + 11)) 300000 131 text
  qio disk.qcow2 "write -z $((256 * K)) $((64 * K))" "discard $((2 * M)) $((64 * K))" \
    "write -P 0x19 $((4 * M - 1000)) 1000"
  oracle "$FIXTURE/disk.qcow2" "External data file disk.data (data_file_raw=$1), 64 KiB clusters, \
4 MiB: writes including at guest offset 0 (L2 entry with host offset 0 + copied bit), text data, \
write -z, discard, a write at the end. No snapshots (QEMU forbids them with a data file). QEMU 7.2 \
resolves the relative data-file name against its working directory; all commands ran in this folder."
}

# 7. preallocation, zero writes, discard
fx_prealloc() { # mode
  create disk.qcow2 $((4 * M)) "preallocation=$1"
  qio disk.qcow2 "write -P 0x27 5000 10000"
  wdata disk.qcow2 $((1 * M + 1)) 300000 141 mixed
  snap disk.qcow2 s1
  qio disk.qcow2 "write -P 0x28 $((3 * M)) 65536" "write -z $((1 * M)) $((64 * K))"
  oracle "$FIXTURE/disk.qcow2" "v3, 64 KiB clusters, preallocation=$1, 4 MiB: writes, snapshot s1, \
more writes and a write -z. Preallocated but unwritten clusters read as zeros."
}
zero_ops() { # image
  local img=$1
  snap "$img" "before zeroing"
  qio "$img" "write -z $((64 * K)) $((64 * K))" "write -z -u $((192 * K)) $((128 * K))" \
    "write -z 300000 5000" "write -z -u 500000 70000" "discard $((1 * M)) $((128 * K))" \
    "discard $((1 * M + 300 * K + 1000)) 100000" "write -P 0x99 $((1 * M + 16 * K)) 4096" \
    "write -z $((3 * M)) $((1 * M))" "discard $((2 * M + 64 * K)) $((64 * K))"
  snap "$img" "after zeroing"
  qio "$img" "write -P 0xaa $((64 * K + 100)) 100" "write -P 0xab $((3 * M + 65536 - 50)) 100"
}
fx_zero() { # compat
  create disk.qcow2 $((4 * M)) "compat=$1"
  wdata disk.qcow2 0 $((4 * M)) 151 text
  zero_ops disk.qcow2
  oracle "$FIXTURE/disk.qcow2" "compat=$1, 64 KiB clusters, 4 MiB of text, snapshot 'before \
zeroing', then write -z (keeps allocation), write -z -u (may unmap), unaligned write -z, aligned \
and unaligned discard, a write into a discarded cluster, snapshot 'after zeroing', small writes into \
zeroed clusters."
}
fx_zero_backing() {
  create base.qcow2 $((4 * M))
  wdata base.qcow2 0 $((4 * M)) 161 text
  create disk.qcow2 "" "" -b base.qcow2 -F qcow2
  wdata disk.qcow2 $((128 * K)) $((2 * M)) 162 records
  zero_ops disk.qcow2
  oracle "$FIXTURE/disk.qcow2" "Overlay (v3, 64 KiB clusters) over base.qcow2 (4 MiB text): \
records written, snapshot 'before zeroing', then write -z, write -z -u, unaligned write -z, discard \
(zero clusters must hide the backing data), snapshot 'after zeroing', small writes."
}

# 8. snapshots, resizes and odd names
fx_snapshots_resize() {
  create disk.qcow2 $((4 * M))
  wdata disk.qcow2 0 $((1 * M)) 171 text
  snap disk.qcow2 first
  qio disk.qcow2 "write -P 0x21 $((512 * K)) $((1 * M))"
  wdata disk.qcow2 $((2 * M)) $((1 * M)) 172 mixed
  snap disk.qcow2 "before grow"
  qemu-img resize -q disk.qcow2 +$((3 * M + 512))
  qio disk.qcow2 "write -P 0x31 $((4 * M - 1000)) 2000" "write -P 0x32 $((7 * M + 512 - 300)) 300"
  wdata disk.qcow2 $((5 * M)) $((1 * M)) 173 text
  snap disk.qcow2 "before shrink"
  qemu-img resize -q --shrink disk.qcow2 $((2 * M + 1024))
  qio disk.qcow2 "write -P 0x41 $((2 * M + 1024 - 700)) 700"
  snap disk.qcow2 "after shrink"
  qemu-img resize -q disk.qcow2 +$((1 * M))
  qio disk.qcow2 "write -P 0x51 $((3 * M)) 1024" "write -P 0x52 100 100"
  oracle "$FIXTURE/disk.qcow2" "v3, 64 KiB clusters. Snapshots with different data and sizes: \
'first' (4 MiB), 'before grow' (4 MiB), resize +3 MiB+512, 'before shrink' (7 MiB + 512), resize \
--shrink to 2 MiB + 1024, 'after shrink' (2 MiB + 1024), resize +1 MiB (the regrown area reads as \
zeros) and writes: active is 3 MiB + 1024. Each snapshot oracle has that snapshot's own size."
}
fx_snapshot_names() {
  local names=("" "1" "a/b" "." ".." "with spaces" "with spaces" "ünïcödé ☃" "-dash"
    "$(printf 'L%.0s' $(seq 1 300))")
  create disk.qcow2 $((1 * M)) cluster_size=4k
  wdata disk.qcow2 0 $((1 * M)) 181 text
  local i
  for i in "${!names[@]}"; do
    qio disk.qcow2 "write -P $((0x10 + i)) 0 512" "write -P $((0x10 + i)) $(((i + 1) * 64 * K + 7)) 1000"
    qemu-img snapshot -c "${names[$i]}" disk.qcow2
  done
  qio disk.qcow2 "write -P 0x7f 0 512"
  oracle "$FIXTURE/disk.qcow2" "v3, 4 KiB clusters, 1 MiB: ${#names[@]} snapshots with awkward \
names, in id order: '' (empty), '1' (equal to another snapshot's id), 'a/b', '.', '..', 'with \
spaces' twice (duplicate name: qemu-img 7.2 allows it), 'ünïcödé ☃' (UTF-8), '-dash', and 300 x 'L' \
(longer than NAME_MAX). Snapshot with id N has byte 0x0f+N at guest offset 0; active has 0x7f. \
Oracles were made with qemu-img snapshot -a <id>."
  local v id b
  for id in $(seq 1 ${#names[@]}); do
    v=$(find . -maxdepth 1 -name "snap-$id-*.raw" -o -maxdepth 1 -name "snap-$id.raw" | head -n1)
    b=$(od -An -tu1 -N1 "$v" | tr -d ' ')
    [[ $b == $((0x0f + id)) ]] || die "snapshot-names: oracle $v starts with $b, expected $((0x0f + id))"
  done
}

# 9. VM state (savevm in a paused and in a briefly running TCG guest)
fx_savevm() { # cluster-size disk-size
  create disk.qcow2 "$2" "cluster_size=$1"
  wdata disk.qcow2 0 $((1 * M)) 191 text
  qio disk.qcow2 "write -P 0x42 $((3 * M + 5)) 70000"
  cat >"$WORK/savevm.qmp" <<'EOF'
hmp savevm vm1
hmp qemu-io d0 "write -P 0x5a 1048576 65536"
{"execute":"cont"}
sleep 0.4
{"execute":"stop"}
hmp savevm vm2
{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d0","name":"disk-only"}}
EOF
  qmp "$WORK/savevm.qmp" -machine pc,accel=tcg -m 32 -S \
    -drive file=disk.qcow2,if=none,id=d0,format=qcow2 -device virtio-blk-pci,drive=d0
  qio disk.qcow2 "write -P 0x6b $((1 * M + 4096)) 4096"
  oracle "$FIXTURE/disk.qcow2" "v3, $1-byte clusters, disk $2 bytes: qemu-system-x86_64 (pc, \
TCG, 32 MiB, virtio-blk) savevm 'vm1' while paused before the first instruction, a disk write, \
0.4 s of running SeaBIOS, savevm 'vm2', then a disk-only internal snapshot 'disk-only' \
(vm_state_size 0, no vmstate view); active written after. VM state lives in each snapshot's L1 \
space at the first L1 entry past the disk (vmstate_offset in the view)."
}

# 10. 2 TiB sparse image
fx_huge() {
  local sz=$((2 * T)) tb=$T
  create disk.qcow2 $sz cluster_size=64k
  wdata disk.qcow2 1000 200000 201 text
  wdata disk.qcow2 $((tb - 100000)) 300000 202 mixed
  qio disk.qcow2 "write -P 0x7e $((sz - 65536 * 2 - 7)) 100"
  snap disk.qcow2 s1
  qio disk.qcow2 "write -P 0x6f $((sz - 70000)) 70000" "write -P 0x3c $((tb + 5)) 10"
  local written="[[1000,200000],[$((tb - 100000)),300000],[$((sz - 65536 * 2 - 7)),100],[$((sz - 70000)),70000],[$((tb + 5)),10]]"
  oracle "$FIXTURE/disk.qcow2" "v3, 64 KiB clusters, virtual size 2 TiB: writes near 0, across \
the 1 TiB L1/L2 boundary, and up to the very last byte; snapshot s1 before the last writes. The \
active and snapshot oracles are full 2 TiB raw files written sparse by qemu-img convert (a few \
hundred KiB on disk); compare 'sampled': random ranges plus the 'written' ranges." \
    --compare sampled --written "$written"
  local kb
  for f in active.raw snap-1-s1.raw; do
    kb=$(du -k "$f" | cut -f1)
    ((kb < 65536)) || die "huge-2t: $f is not sparse ($kb KiB on disk)"
  done
}

# 11. 500 snapshots
fx_snap500() {
  create disk.qcow2 $((1 * M)) cluster_size=4k
  wdata disk.qcow2 0 $((1 * M)) 211 text
  local i
  {
    for i in $(seq 1 500); do
      echo "{\"execute\":\"blockdev-snapshot-internal-sync\",\"arguments\":{\"device\":\"d0\",\"name\":\"s$i\"}}"
      if ((i % 25 == 0)); then
        echo "hmp qemu-io d0 \"write -P $((i / 25)) $((i * 2000 + 1)) 3000\""
      fi
    done
  } >"$WORK/snap500.qmp"
  qmp "$WORK/snap500.qmp" -machine none -drive file=disk.qcow2,if=none,id=d0,format=qcow2,cache=unsafe
  qio disk.qcow2 "write -P 0xee 100 100"
  oracle "$FIXTURE/disk.qcow2" "v3, 4 KiB clusters, 1 MiB of text, 500 internal snapshots s1..s500 \
(ids 1..500; made with QMP blockdev-snapshot-internal-sync), a 3000-byte write after every 25th \
snapshot. Oracles only for ids 1, 2, 25, 26, 100, 101, 250, 333, 499, 500 and the active view \
(info.json lists all 500)." --snapshots 1,2,25,26,100,101,250,333,499,500
}

# extras
fx_dirty() {
  create disk.qcow2 $((4 * M)) lazy_refcounts=on
  wdata disk.qcow2 0 $((1 * M)) 221 text
  snap disk.qcow2 s1
  # qemu-io is killed after the writes: the dirty bit stays set and refcounts are stale
  qemu-io -f qcow2 disk.qcow2 -c "write -P 0x33 $((100 * K)) $((200 * K))" \
    -c "write -P 0x34 $((2 * M + 1)) 70000" -c "sigraise 9" >/dev/null 2>&1 || true
  qemu-img info --output=json disk.qcow2 | grep -q '"dirty-flag": true' || die "dirty: image is not dirty"
  oracle "$FIXTURE/disk.qcow2" "v3, lazy_refcounts=on, snapshot s1, then writes from a qemu-io \
that was killed (SIGKILL): incompatible bit 0 (dirty) is set and refcounts are stale; a read-only \
reader must still read it (qemu-img convert does, without repairing)."
}
fx_bitmap() {
  create disk.qcow2 $((4 * M))
  wdata disk.qcow2 0 $((2 * M)) 231 mixed
  qemu-img bitmap --add disk.qcow2 bm0
  qemu-img bitmap --add -g 4096 disk.qcow2 bm1
  qio disk.qcow2 "write -P 0x44 $((3 * M)) 100000"
  oracle "$FIXTURE/disk.qcow2" "v3, 64 KiB clusters, 4 MiB, two persistent dirty bitmaps (bitmaps \
header extension, autoclear bit 0) and data; the reader must skip the extension."
}

# ------------------------------------------------------------------------------------------------
# job runner

MAXJOBS=${FIXTURE_JOBS:-$(nproc 2>/dev/null || echo 2)}
ORDER=0
FIXTURES=()
fixture() { # name function [args...]
  local name=$1; shift
  ORDER=$((ORDER + 1))
  FIXTURES+=("$name")
  while (($(jobs -rp | wc -l) >= MAXJOBS)); do wait -n || true; done
  (
    set -eEuo pipefail
    trap 'echo "make-fixtures: $name: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
    export FIXTURE=$name FIXTURE_ORDER=$ORDER WORK=$BUILD/.work/$name
    mkdir -p "$BUILD/$name" "$WORK"
    cd "$BUILD/$name"
    start=$(date +%s%N)
    "$@"
    rm -rf "$WORK"
    echo "make-fixtures: $name done in $((($(date +%s%N) - start) / 1000000)) ms"
    touch "$BUILD/.status/$name.ok"
  ) >"$BUILD/.logs/$name.log" 2>&1 &
  JOB_PIDS+=($!)
}

# longest first
fixture snap500 fx_snap500
fixture savevm-c64k fx_savevm 65536 $((8 * M + 512))
fixture savevm-c4k fx_savevm 4096 $((6 * M))
fixture zstd-c2m fx_compressed $((2 * M)) zstd 1.1 6 1001
fixture zlib-c2m fx_compressed $((2 * M)) zlib 1.1 6 1002
fixture v2-c64k fx_basic 0.10
fixture v3-c64k fx_basic 1.1
fixture v3-c512 fx_c512
fixture v3-c4k fx_c4k
fixture v3-c64k-l2cross fx_c64k_l2cross
fixture v3-c2m fx_c2m
fixture zlib-c64k fx_compressed 65536 zlib 1.1 96 1003
fixture zstd-c64k fx_compressed 65536 zstd 1.1 96 1004
fixture zlib-c4k fx_compressed 4096 zlib 1.1 1024 1005
fixture zstd-c4k fx_compressed 4096 zstd 1.1 1024 1006
fixture zlib-c512 fx_compressed 512 zlib 1.1 2048 1007
fixture v2-zlib-c64k fx_compressed 65536 zlib 0.10 64 1008
fixture el2-c64k fx_el2
fixture el2-c64k-backing fx_el2_backing
fixture el2-zlib-c64k fx_el2_compressed zlib 1101
fixture el2-zstd-c64k fx_el2_compressed zstd 1102
fixture el2-c2m-rawbacking fx_el2_c2m_rawbacking
fixture chain-raw-qcow2-qcow2 fx_chain
fixture chain-subdir fx_chain_subdir
fixture chain-short-backing fx_chain_short
fixture chain-nofmt fx_chain_nofmt
fixture chain-backing-snapshots fx_chain_backing_snaps
fixture datafile-raw fx_datafile on
fixture datafile fx_datafile off
fixture prealloc-metadata fx_prealloc metadata
fixture prealloc-falloc fx_prealloc falloc
fixture prealloc-full fx_prealloc full
fixture zero-discard fx_zero 1.1
fixture zero-discard-v2 fx_zero 0.10
fixture zero-discard-backing fx_zero_backing
fixture snapshots-resize fx_snapshots_resize
fixture snapshot-names fx_snapshot_names
fixture huge-2t fx_huge
fixture dirty-lazy-refcounts fx_dirty
fixture bitmaps fx_bitmap

wait || true
JOB_PIDS=()
failed=()
for name in "${FIXTURES[@]}"; do
  [[ -f $BUILD/.status/$name.ok ]] || failed+=("$name")
done
if ((${#failed[@]})); then
  for name in "${failed[@]}"; do
    echo "---- $name (log) ----" >&2
    tail -n 40 "$BUILD/.logs/$name.log" >&2
  done
  die "failed fixtures: ${failed[*]}"
fi
grep -h 'WARNING' "$BUILD"/.logs/*.log >&2 || true

python3 "$HELPER" manifest "$BUILD" "$QEMU_VERSION" "$STAMP"
rm -rf "$BUILD/.work" "$BUILD/.meta" "$BUILD/.status" # .logs stays: one build log per fixture
fixture_finish
