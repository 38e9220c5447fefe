#!/usr/bin/env bash
# make-crypt-fixtures.sh — encrypted qcow2 (LUKS in each cipher mode QEMU creates, legacy AES) and qcow
# version 1 images (plain, compressed, AES, backing chains), made by QEMU, with QEMU's raw output for each
# view as the oracle, plus OUTDIR/manifest.json describing them.
#
#   bash scripts/make-crypt-fixtures.sh [OUTDIR]        (default: fixtures/crypt/)
#
# Up to date (OUTDIR/.stamp = hash of this script and the QEMU version): exits at once. Otherwise builds
# into a sibling temporary folder and swaps it into place.
#
# Oracle (never our code):
#   qemu-img convert --object secret,id=s0,file=KEY --image-opts driver=qcow2,file.filename=IMG,
#     encrypt.key-secret=s0 -O raw out.raw                 (driver=qcow for version 1; backing.* for chains)
#   snapshot views: the same with -l snapshot.name=NAME (no image here was resized after a snapshot).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
FIXTURE_NAME=make-crypt-fixtures
. "$SCRIPT_DIR/lib/fixture-build.sh"
export LC_ALL=C

fixture_need "apt-get install qemu-utils python3" qemu-img qemu-io python3 flock
STAMP=$(fixture_stamp "$SCRIPT_DIR/make-crypt-fixtures.sh" < <(qemu-img --version | head -n1))
fixture_begin "$(realpath -m "${1:-$REPO_ROOT/fixtures/crypt}")"
trap 'rm -rf "$BUILD"' EXIT
cd "$BUILD"
echo "make-crypt-fixtures: building into $OUTDIR"

M=$((1024 * 1024))
# Key files hold the exact bytes of the passphrase (no newline), as QEMU's secret,file= reads them.
printf '%s' 'correct horse' >key-a
printf '%s' 'battery staple!' >key-b
printf '%s' '0123456789abcdefXYZ' >key-long # legacy AES: only the first 16 bytes count
printf '%s' 'not the passphrase' >key-wrong

# Deterministic source disk: text, random and zero regions, unaligned edges.
python3 - <<'EOF'
import random
r = random.Random(9)
size = 3 * 1024 * 1024
b = bytearray(size)
def fill(off, n, kind):
    if kind == 'rand':
        b[off:off+n] = bytes(r.getrandbits(8) for _ in range(n))
    else:
        line = b''.join(b'line %06d of a compressible text region\n' % i for i in range(n // 30 + 2))
        b[off:off+n] = line[:n]
fill(0, 70000, 'text')
fill(100001, 200000, 'rand')
fill(1024 * 1024 - 333, 300000, 'text')
fill(2 * 1024 * 1024 + 4097, 150000, 'rand')
fill(size - 5000, 5000, 'text')
open('src.raw', 'wb').write(b)
EOF

MANIFEST=()
# entry NAME FORMAT IMAGE KEYS(comma list, chain order top first; '' = none) DESCRIPTION [SNAPSHOTS...]
entry() {
  local name=$1 format=$2 image=$3 keys=$4 desc=$5; shift 5
  local snaps='' s
  for s in "$@"; do snaps+="${snaps:+,}{\"name\":\"$s\",\"oracle\":\"$name/snap-$s.raw\"}"; done
  MANIFEST+=("{\"name\":\"$name\",\"format\":\"$format\",\"image\":\"$name/$image\",\"keys\":\"$keys\",\"description\":\"$desc\",\"oracle\":\"$name/active.raw\",\"snapshots\":[${snaps}]}")
}
# opts DRIVER IMAGE SECRET-IDS...  --image-opts string: encrypt.key-secret for the top, backing.* below
opts() {
  local driver=$1 img=$2; shift 2
  local o="driver=$driver,file.filename=$img" prefix='' s
  for s in "$@"; do
    [[ $s != - ]] && o+=",${prefix}encrypt.key-secret=$s"
    prefix+='backing.'
  done
  echo "$o"
}
SECRETS=(--object secret,id=sa,file=../key-a --object secret,id=sb,file=../key-b --object secret,id=sl,file=../key-long)
# conv OUT.raw DRIVER IMAGE SECRET-IDS... [-- -l snapshot.name=X]
oracle() {
  local out=$1 driver=$2 img=$3; shift 3
  local ids=() extra=()
  while (($#)); do if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi; ids+=("$1"); shift; done
  qemu-img convert "${SECRETS[@]}" "${extra[@]}" --image-opts "$(opts "$driver" "$img" "${ids[@]}")" -O raw "$out"
}
# qio DRIVER IMAGE SECRET-IDS... -- CMDS...
qio() {
  local driver=$1 img=$2; shift 2
  local ids=() cmds=() out
  while (($#)); do if [[ $1 == -- ]]; then shift; break; fi; ids+=("$1"); shift; done
  for c in "$@"; do cmds+=(-c "$c"); done
  out=$(qemu-io "${SECRETS[@]}" --image-opts "$(opts "$driver" "$img" "${ids[@]}")" "${cmds[@]}" 2>&1) || { echo "$out" >&2; die "qemu-io failed on $img"; }
  if grep -qiE 'fail|error|invalid' <<<"$out"; then echo "$out" >&2; die "qemu-io reported a problem on $img"; fi
}
# LUKS creation times PBKDF2 with the thread's CPU clock, which this machine's kernel counts in ticks:
# about one try in three fails "Unable to get accurate CPU usage", idle or busy, sometimes several in a
# row. A failed try costs milliseconds, so try up to 40 times.
retry() { local i; for i in $(seq 40); do "$@" 2>/dev/null && return 0; sleep 0.1; done; "$@"; }
luks() { # luks NAME CIPHER-OPTS DESCRIPTION
  local name=$1 o=$2 desc=$3
  mkdir "$name"; cd "$name"
  retry qemu-img convert "${SECRETS[@]}" -O qcow2 -o "encrypt.format=luks,encrypt.key-secret=sa,encrypt.iter-time=10${o:+,$o}" ../src.raw disk.qcow2
  oracle active.raw qcow2 disk.qcow2 sa
  cd ..
  entry "$name" qcow2 disk.qcow2 key-a "$desc"
}

# ---------------------------------------------------------------------------------------------------
# LUKS, one image per cipher mode QEMU creates
luks luks-aes256-xts '' 'LUKS default: aes-256-xts-plain64, sha256'
luks luks-aes128-xts 'encrypt.cipher-alg=aes-128,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha1' 'aes-128-xts-plain64, sha1'
luks luks-aes128-cbc-plain 'encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha512' 'aes-128-cbc-plain, sha512 (aes-192: QEMU 7.2 aborts creating it, 24x4000 key material is not sector aligned)'
luks luks-aes256-cbc-plain64 'encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha224' 'aes-256-cbc-plain64, sha224'
luks luks-aes128-cbc-essiv 'encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1' 'aes-128-cbc-essiv:sha256 (ESSIV with AES-256), sha1'
luks luks-aes256-ecb 'encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ecb' 'aes-256-ecb'
luks luks-aes256-ctr 'encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ctr,encrypt.ivgen-alg=plain64,encrypt.hash-alg=md5' 'aes-256-ctr-plain64, md5'
luks luks-cast5-cbc 'encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64' 'cast5-128-cbc-plain64 (OpenSSL legacy provider)'
luks luks-serpent-xts 'encrypt.cipher-alg=serpent-256,encrypt.cipher-mode=xts' 'serpent-256-xts-plain64 (refused: not in OpenSSL)'
luks luks-twofish-cbc 'encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64' 'twofish-128-cbc-plain64 (refused: not in OpenSSL)'

# LUKS with 4 KiB clusters, a second key slot, and two internal snapshots (shared and COW-copied clusters)
mkdir luks-snapshots; cd luks-snapshots
retry qemu-img create "${SECRETS[@]}" -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sa,encrypt.iter-time=10,cluster_size=4096 disk.qcow2 2M
qio qcow2 disk.qcow2 sa -- "write -P 0x11 1000 300000" "write -P 0x22 1048575 4097"
qemu-img snapshot "${SECRETS[@]}" -c s1 --image-opts "$(opts qcow2 disk.qcow2 sa)"
qio qcow2 disk.qcow2 sa -- "write -P 0x33 5000 7000" "write -P 0x44 2000000 97152"
qemu-img snapshot "${SECRETS[@]}" -c s2 --image-opts "$(opts qcow2 disk.qcow2 sa)"
qio qcow2 disk.qcow2 sa -- "write -P 0x55 0 512" "write -z 1048576 65536"
oracle active.raw qcow2 disk.qcow2 sa
oracle snap-s1.raw qcow2 disk.qcow2 sa -- -l snapshot.name=s1
oracle snap-s2.raw qcow2 disk.qcow2 sa -- -l snapshot.name=s2
cd ..
entry luks-snapshots qcow2 disk.qcow2 key-a 'LUKS, 4 KiB clusters, two snapshots, zero cluster' s1 s2

# LUKS with an external data file (IV from the offset inside the data file)
mkdir luks-datafile; cd luks-datafile
retry qemu-img create "${SECRETS[@]}" -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sa,encrypt.iter-time=10,data_file=disk.data disk.qcow2 3M
qio qcow2 disk.qcow2 sa -- "write -P 0x66 777 100000" "write -P 0x77 2097152 300001"
oracle active.raw qcow2 disk.qcow2 sa
cd ..
entry luks-datafile qcow2 disk.qcow2 key-a 'LUKS with an external data file'

# Chain: LUKS overlay (key b) over a LUKS base (key a)
mkdir chain-luks-luks; cd chain-luks-luks
retry qemu-img convert "${SECRETS[@]}" -O qcow2 -o encrypt.format=luks,encrypt.key-secret=sa,encrypt.iter-time=10 ../src.raw base.qcow2
retry qemu-img create "${SECRETS[@]}" -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sb,encrypt.iter-time=10 -b base.qcow2 -F qcow2 top.qcow2 3M
qio qcow2 top.qcow2 sb sa -- "write -P 0x88 65536 131072" "write -P 0x99 1000000 5"
oracle active.raw qcow2 top.qcow2 sb sa
cd ..
entry chain-luks-luks qcow2 top.qcow2 key-b,key-a 'LUKS overlay (key b) over a LUKS base (key a)'

# Legacy AES qcow2 (long key: only the first 16 bytes count), with a snapshot
mkdir aes-qcow2; cd aes-qcow2
qemu-img convert "${SECRETS[@]}" -O qcow2 -o encrypt.format=aes,encrypt.key-secret=sl,cluster_size=8192 ../src.raw disk.qcow2
qemu-img snapshot "${SECRETS[@]}" -c s1 --image-opts "$(opts qcow2 disk.qcow2 sl)"
qio qcow2 disk.qcow2 sl -- "write -P 0xab 4000 9000" "write -P 0xcd 3000000 145728"
oracle active.raw qcow2 disk.qcow2 sl
oracle snap-s1.raw qcow2 disk.qcow2 sl -- -l snapshot.name=s1
cd ..
entry aes-qcow2 qcow2 disk.qcow2 key-long 'legacy AES qcow2, 8 KiB clusters, 19-byte key, one snapshot' s1

# Chain: legacy AES overlay (key a) over a plain qcow2 base
mkdir chain-aes-plain; cd chain-aes-plain
qemu-img convert -O qcow2 ../src.raw base.qcow2
qemu-img create "${SECRETS[@]}" -q -f qcow2 -o encrypt.format=aes,encrypt.key-secret=sa -b base.qcow2 -F qcow2 top.qcow2 3M
qio qcow2 top.qcow2 sa - -- "write -P 0x5a 30000 70000"
oracle active.raw qcow2 top.qcow2 sa -
cd ..
entry chain-aes-plain qcow2 top.qcow2 key-a 'legacy AES qcow2 overlay over a plain qcow2'

# ---------------------------------------------------------------------------------------------------
# qcow version 1

# setsize IMAGE BYTES: qemu-img create rounds sizes up to 512, so an odd header size is patched in (byte 24)
setsize() { python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(24); f.write(struct.pack(">Q",int(sys.argv[2])))' "$1" "$2"; }
mkdir v1-plain; cd v1-plain
qemu-img convert -O qcow ../src.raw disk.qcow
oracle active.raw qcow disk.qcow -
cd ..
entry v1-plain qcow disk.qcow '' 'qcow v1, 4 KiB clusters, l2_bits 9'

mkdir v1-compressed; cd v1-compressed
# qemu-img 7.2 exits 1 here without a message after writing correct data (see forensic-formats.md 2.2).
qemu-img convert -c -O qcow ../src.raw disk.qcow || true
qemu-img compare -q -f qcow -F raw disk.qcow ../src.raw || die "v1 compressed image differs from its source"
oracle active.raw qcow disk.qcow -
cd ..
entry v1-compressed qcow disk.qcow '' 'qcow v1 with compressed clusters (size in bytes)'

mkdir v1-aes; cd v1-aes
qemu-img convert "${SECRETS[@]}" -O qcow -o encrypt.format=aes,encrypt.key-secret=sa ../src.raw disk.qcow
oracle active.raw qcow disk.qcow sa
cd ..
entry v1-aes qcow disk.qcow key-a 'qcow v1 with legacy AES'

mkdir v1-oddsize; cd v1-oddsize
qemu-img create -q -f qcow disk.qcow 4194204
qio qcow disk.qcow - -- "write -P 0x3c 4193000 1304" "write -P 0x4d 0 1000"
setsize disk.qcow 4194204
oracle active.raw qcow disk.qcow -
cd ..
entry v1-oddsize qcow disk.qcow '' 'qcow v1, header size 4194204: QEMU shows 4193792 bytes'

mkdir qcow2-oddsize; cd qcow2-oddsize
qemu-img create -q -f qcow2 disk.qcow2 4194204
qio qcow2 disk.qcow2 - -- "write -P 0x3c 4193000 1304"
setsize disk.qcow2 4194204
oracle active.raw qcow2 disk.qcow2 -
cd ..
entry qcow2-oddsize qcow2 disk.qcow2 '' 'qcow2, header size 4194204: QEMU shows 4193792 bytes'

mkdir chain-v1-v1; cd chain-v1-v1
qemu-img convert -O qcow ../src.raw base.qcow
qemu-img create -q -f qcow -b base.qcow -F qcow top.qcow
qio qcow top.qcow - - -- "write -P 0x71 1000 20000" "write -P 0x72 2500000 100000"
oracle active.raw qcow top.qcow - -
cd ..
entry chain-v1-v1 qcow top.qcow '' 'qcow v1 over qcow v1 (512-byte clusters, l2_bits 12, L1 at 56)'

mkdir chain-v1-raw; cd chain-v1-raw
cp ../src.raw base.img
qemu-img create -q -f qcow -b base.img -F raw top.qcow
qio qcow top.qcow - - -- "write -P 0x73 3333 44444"
oracle active.raw qcow top.qcow - -
cd ..
entry chain-v1-raw qcow top.qcow '' 'qcow v1 over a raw file'

mkdir chain-v1aes-qcow2; cd chain-v1aes-qcow2
qemu-img convert -O qcow2 ../src.raw base.qcow2
qemu-img create "${SECRETS[@]}" -q -f qcow -o encrypt.format=aes,encrypt.key-secret=sb -b base.qcow2 -F qcow2 top.qcow 3M
qio qcow top.qcow sb - -- "write -P 0x74 70000 80000" "write -P 0x75 3145000 728"
oracle active.raw qcow top.qcow sb -
cd ..
entry chain-v1aes-qcow2 qcow top.qcow key-b 'qcow v1 with AES over a plain qcow2'

mkdir chain-qcow2-v1; cd chain-qcow2-v1
qemu-img convert -c -O qcow ../src.raw base.qcow || true
qemu-img create -q -f qcow2 -b base.qcow -F qcow top.qcow2
qio qcow2 top.qcow2 - - -- "write -P 0x76 200000 5000"
oracle active.raw qcow2 top.qcow2 - -
cd ..
entry chain-qcow2-v1 qcow2 top.qcow2 '' 'qcow2 over a compressed qcow v1'

mkdir chain-luks-v1aes; cd chain-luks-v1aes
qemu-img convert "${SECRETS[@]}" -O qcow -o encrypt.format=aes,encrypt.key-secret=sa ../src.raw base.qcow
retry qemu-img create "${SECRETS[@]}" -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sb,encrypt.iter-time=10 -b base.qcow -F qcow top.qcow2 3M
qio qcow2 top.qcow2 sb sa -- "write -P 0x77 0 4096"
oracle active.raw qcow2 top.qcow2 sb sa
cd ..
entry chain-luks-v1aes qcow2 top.qcow2 key-a,key-b 'LUKS qcow2 (key b) over an AES qcow v1 (key a): AES takes the first key given, LUKS the first that opens it'

rm -f src.raw
{ printf '{"qemu":"%s","images":[' "$(qemu-img --version | head -n1)"; (IFS=,; printf '%s' "${MANIFEST[*]}"); printf ']}\n'; } >manifest.json
python3 -c 'import json,sys; json.load(open("manifest.json"))' || die "bad manifest"
fixture_finish
