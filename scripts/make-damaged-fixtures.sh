#!/usr/bin/env bash
# Damaged images, made by QEMU and then damaged the way evidence gets damaged (a copy cut short, a
# header pointing the snapshot table at garbage, a snapshot's L1 table or extra data that cannot be
# used), into fixtures/damaged/ (or $1), with manifest.json describing each and QEMU's bytes for every
# view that stays readable.
#
# The damage never touches the active disk's metadata, so the active disk's oracle is
# `qemu-img convert -O raw` of the image before it was damaged; where QEMU 7.2 still opens the damaged
# image (cut-table, bad-l1: it does; table-at-0: it refuses, "Too much extra metadata") the script
# checks that QEMU's output of the damaged image is the same bytes.
#
# Up to date (OUTDIR/.stamp = hash of this script and the QEMU version): a no-op.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
FIXTURE_NAME=make-damaged-fixtures
. "$SCRIPT_DIR/lib/fixture-build.sh"
export LC_ALL=C

fixture_need "apt-get install qemu-utils python3" qemu-img qemu-io python3 flock
STAMP=$(fixture_stamp "$SCRIPT_DIR/make-damaged-fixtures.sh" < <(qemu-img --version | head -n1))
fixture_begin "$(realpath -m "${1:-$REPO_ROOT/fixtures/damaged}")"
trap 'rm -rf "$BUILD"' EXIT
cd "$BUILD"
echo "make-damaged-fixtures: building into $OUTDIR"

# The undamaged image: 4 MiB, 64 KiB clusters, two snapshots, the snapshot table last in the file.
qemu-img create -q -f qcow2 -o cluster_size=65536 good.qcow2 4M
qemu-io -c 'write -P 0x41 0 1M' -c 'write -P 0x44 3M 128k' good.qcow2 >/dev/null
qemu-img snapshot -c first good.qcow2
qemu-io -c 'write -P 0x42 512k 1M' -c 'write -P 0x43 2M 64k' good.qcow2 >/dev/null
qemu-img snapshot -c second good.qcow2
qemu-img convert -O raw good.qcow2 active.raw
qemu-img convert -O raw -l snapshot.id=1 good.qcow2 snap-first.raw
qemu-img convert -O raw -l snapshot.id=2 good.qcow2 snap-second.raw

# Each damage: a copy patched (or cut) by damage.py; prints the JSON line for the manifest.
python3 - <<'PY'
import json, shutil, struct, subprocess

def header(path):
    b = open(path, 'rb').read(72)
    nb, = struct.unpack('>I', b[60:64]); off, = struct.unpack('>Q', b[64:72])
    return nb, off

def entries(path):
    b = open(path, 'rb').read()
    nb, off = header(path)
    at, out = off, []
    for _ in range(nb):
        ids, ns = struct.unpack('>HH', b[at + 12:at + 16]); ex, = struct.unpack('>I', b[at + 36:at + 40])
        out.append((at, ex))
        at = (at + 40 + ex + ids + ns + 7) // 8 * 8
    return out

def patch(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset); f.write(data)

def qemu_same(path):
    """QEMU opens the damaged image and gives the undamaged active disk: checked, else recorded as refused."""
    r = subprocess.run(['qemu-img', 'convert', '-O', 'raw', path, path + '.qemu.raw'], capture_output=True, text=True)
    if r.returncode != 0:
        return r.stderr.strip().splitlines()[0]
    same = open(path + '.qemu.raw', 'rb').read() == open('active.raw', 'rb').read()
    subprocess.run(['rm', '-f', path + '.qemu.raw'])
    if not same: raise SystemExit(f'{path}: QEMU gives other active bytes than the undamaged image')
    return 'serves the active disk'

nb, table = header('good.qcow2')
(e0, ex0), (e1, ex1) = entries('good.qcow2')
size = len(open('good.qcow2', 'rb').read())
assert table > 0x200000 and e1 + 40 < size, 'the snapshot table should be last in the file'
images = []

# A copy cut short inside the second entry of the snapshot table (a failed copy, a full disk).
shutil.copy('good.qcow2', 'cut-table.qcow2')
cut = e1 + 20
with open('cut-table.qcow2', 'r+b') as f: f.truncate(cut)
images.append(dict(name='cut-table', image='damaged/cut-table.qcow2', qemu=qemu_same('cut-table.qcow2'),
    description=f'the image cut at {cut} bytes, inside the snapshot table (entry 1 at {e1})',
    problems=[dict(what='snapshot table', offset=table)], snapshots=[]))

# The header points the snapshot table at offset 0 with the largest count QEMU allows.
shutil.copy('good.qcow2', 'table-at-0.qcow2')
patch('table-at-0.qcow2', 60, struct.pack('>IQ', 65536, 0))
images.append(dict(name='table-at-0', image='damaged/table-at-0.qcow2', qemu=qemu_same('table-at-0.qcow2'),
    description='nb_snapshots 65536 and snapshots_offset 0: the "table" is the header',
    problems=[dict(what='snapshot table', offset=0)], snapshots=[]))

# Snapshot "second"'s L1 table offset points 1 GiB into a 3 MiB file.
shutil.copy('good.qcow2', 'bad-l1.qcow2')
patch('bad-l1.qcow2', e1, struct.pack('>Q', 0x40000000))
images.append(dict(name='bad-l1', image='damaged/bad-l1.qcow2', qemu=qemu_same('bad-l1.qcow2'),
    description='snapshot 1 ("second")\'s l1_table_offset is 0x40000000, past the end of the file',
    problems=[dict(what='snapshot 1 ("second", id 2): L1 table', offset=0x40000000)],
    snapshots=[dict(name='first', id='1', oracle='damaged/snap-first.raw')]))

# Snapshot "first"'s extra data says a disk size no file offset can hold (2^63).
assert ex0 >= 16
shutil.copy('good.qcow2', 'bad-extra.qcow2')
patch('bad-extra.qcow2', e0 + 40 + 8, struct.pack('>Q', 1 << 63))
images.append(dict(name='bad-extra', image='damaged/bad-extra.qcow2', qemu=qemu_same('bad-extra.qcow2'),
    description='snapshot 0 ("first")\'s extra data gives disk_size 2^63',
    problems=[dict(what='snapshot 0: extra data', offset=e0 + 40)],
    snapshots=[dict(name='second', id='2', oracle='damaged/snap-second.raw')]))

qemu = subprocess.run(['qemu-img', '--version'], capture_output=True, text=True).stdout.splitlines()[0]
json.dump(dict(qemu=qemu, active='damaged/active.raw', images=images), open('manifest.json', 'w'), indent=2)
PY
rm -f good.qcow2
fixture_finish
