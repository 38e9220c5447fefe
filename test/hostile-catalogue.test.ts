/**
 * Every entry of the hostile catalogue (scripts/make-hostile.ts) through the library: refused at open
 * with its one-line message and code; or opened, with the named region reading EIO while every other
 * byte of every view equals QEMU's output; all in bounded time and memory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { QcowError, openImage, openImageSync, openVolume } from '../src/index.js';
import type { Disk, QcowImage } from '../src/index.js';
import { type HostileCatalogue, type HostileEntry, defaultHostileDir, makeHostile } from '../scripts/make-hostile.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io');
const dir = process.env.QCOW_HOSTILE_DIR ?? defaultHostileDir;
const catalogue: HostileCatalogue = ready ? makeHostile(dir) : { stamp: '', qemu: '', entries: [] };
const abs = (rel: string) => path.join(dir, rel);
const byExpect = (x: HostileEntry['expect']) => catalogue.entries.filter((e) => e.expect === x);

/** Time bounds: generous for a loaded 2-core CI machine, far below anything that hangs. */
const OPEN_MS = 2_000;
const VIEW_MS = 20_000;

function viewOf(img: QcowImage, view: string): Disk {
  if (view === 'active') return img.active;
  const [kind, name] = view.split(':') as [string, string];
  const s = img.snapshots.find((x) => x.name === name);
  if (!s) throw new Error(`no snapshot ${name}`);
  const d = kind === 'vmstate' ? img.vmState(s) : img.snapshotDisk(s);
  if (!d) throw new Error(`no view ${view}`);
  return d;
}

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

function expectOneLine(err: unknown, file: string, code: string, includes: string[]): void {
  expect(err, 'expected a QcowError').toBeInstanceOf(QcowError);
  const e = err as QcowError;
  expect(e.code).toBe(code);
  expect(e.message).not.toMatch(/[\r\n]/);
  expect(e.message.startsWith(`${file}: `), `"${e.message}" should start with "${file}: "`).toBe(true);
  for (const s of includes) expect(e.message).toContain(s);
}

const overlaps = (pos: number, len: number, region: [number, number]) => pos < region[0] + region[1] && region[0] < pos + len;

describe.skipIf(!ready)('hostile catalogue: refused at open', () => {
  it('has the entries the issue names', () => {
    const names = new Set(catalogue.entries.map((e) => e.name));
    for (const n of [
      'bad-magic', 'version-0', 'version-1', 'version-4', 'incompatible-unknown-bit', 'incompatible-unknown-bit-named',
      'header-length-small', 'header-length-huge', 'cluster-bits-8', 'cluster-bits-22', 'size-2-63', 'size-2-53-plus',
      'l1-size-2-30', 'l1-size-small', 'l1-table-past-eof', 'l1-entry-past-eof', 'l1-entry-misaligned', 'l2-entry-past-eof',
      'l2-entry-misaligned', 'compressed-zlib-garbage', 'compressed-zlib-past-eof', 'extended-l2-invalid-bitmap',
      'snapshots-65535', 'snapshots-2-31', 'snapshot-name-past-eof', 'snapshot-extra-data-huge', 'snapshot-l1-past-eof',
      'backing-cycle-self', 'backing-cycle-two', 'backing-dotdot', 'backing-json', 'backing-nbd', 'backing-is-directory',
      'backing-is-fifo', 'backing-missing', 'truncated-data', 'truncated-l2', 'truncated-header', 'zero-length',
      'folder-as-image', 'data-file-missing', 'partitions-ebr-loop', 'partitions-2-32-sectors', 'partitions-gpt-huge-count',
      'partitions-gpt-bad-crcs', 'partitions-gpt-backup-used',
    ]) {
      expect(names.has(n), n).toBe(true);
    }
  });

  it.each(byExpect('refused').map((e) => [e.name, e] as const))('%s', async (_name, entry) => {
    const file = abs(entry.file);
    const messageFile = abs(entry.messageFile ?? entry.file);
    const started = performance.now();
    const err = catchError(() => openImageSync(file));
    expect(performance.now() - started).toBeLessThan(OPEN_MS);
    expectOneLine(err, messageFile, entry.code!, entry.messageIncludes);
    // The promise API refuses the same way.
    await expect(openImage(file)).rejects.toThrow((err as Error).message);
  });
});

describe.skipIf(!ready)('hostile catalogue: a damaged snapshot table or snapshot hides only those snapshots', () => {
  it.each(byExpect('hidden').map((e) => [e.name, e] as const))('%s', (_name, entry) => {
    const file = abs(entry.file);
    const img = openImageSync(file);
    try {
      const names = img.snapshots.map((s) => s.name);
      for (const hidden of entry.hides!) expect(names).not.toContain(hidden);
      for (const view of Object.keys(entry.oracles ?? {})) if (view !== 'active') expect(names).toContain(view.split(':')[1]);
      expect(img.problems.length).toBeGreaterThan(0);
      const lines = img.problems.map((p) => `${p.what} at ${p.where}: ${p.why}; ${p.hides} hidden`);
      for (const s of entry.messageIncludes) expect(lines.some((l) => l.includes(s)), `${s} in ${lines.join(' | ')}`).toBe(true);
      for (const l of lines) expect(l).not.toMatch(/[\r\n]/);
    } finally {
      img.close();
    }
    // strict: refused at open as before, one line.
    const err = catchError(() => openImageSync(file, { strict: true }));
    expectOneLine(err, file, entry.code!, entry.messageIncludes);
  });
});

describe.skipIf(!ready)('hostile catalogue: bad regions read EIO, the rest reads as QEMU does', () => {
  const readable = [...byExpect('eio-region'), ...byExpect('ok'), ...byExpect('hidden')];
  it.each(readable.map((e) => [e.name, e] as const))('%s', { timeout: 60_000 }, (_name, entry) => {
    const file = abs(entry.file);
    const started = performance.now();
    const img = openImageSync(file);
    expect(performance.now() - started).toBeLessThan(OPEN_MS);
    try {
      const chunk = entry.chunk ?? 4096;
      const regionView = entry.view ?? 'active';
      const views = new Set([...Object.keys(entry.oracles ?? {}), ...(entry.region ? [regionView] : [])]);
      let eioSeen = 0;
      for (const view of views) {
        const viewStarted = performance.now();
        const disk = viewOf(img, view);
        const oracle = entry.oracles?.[view] ? fs.readFileSync(abs(entry.oracles[view])) : undefined;
        const region = view === regionView ? entry.region : undefined;
        // Views bigger than their oracle (a snapshot claiming a huge disk) are compared where the oracle
        // reaches and sampled beyond it.
        const compared = oracle ? Math.min(disk.size, oracle.length) : Math.min(disk.size, region ? region[0] + region[1] : 0);
        if (oracle && disk.size < oracle.length) throw new Error(`${view} is ${disk.size} bytes, QEMU's is ${oracle.length}`);
        const buf = Buffer.alloc(chunk);
        for (let pos = 0; pos < compared; pos += chunk) {
          const len = Math.min(chunk, compared - pos);
          const into = buf.subarray(0, len);
          if (region && overlaps(pos, len, region)) {
            const err = catchError(() => disk.readSync(into, pos));
            expectOneLine(err, file, 'EIO', entry.messageIncludes);
            eioSeen++;
          } else {
            expect(disk.readSync(into, pos)).toBe(len);
            if (oracle && !into.equals(oracle.subarray(pos, pos + len))) {
              throw new Error(`${entry.name} ${view}: bytes at ${pos} (+${len}) differ from QEMU's`);
            }
            // Extents of a readable chunk never fail either.
            expect(disk.extents(pos, len).reduce((n, e) => n + e.length, 0)).toBe(len);
          }
        }
        // One byte inside the region still fails, and the failure leaves nothing stuck behind it.
        if (region) {
          const err = catchError(() => disk.readSync(Buffer.alloc(1), region[0] + region[1] - 1));
          expectOneLine(err, file, 'EIO', []);
        }
        if (disk.size > compared) {
          // Past the oracle: sample (zeros, since no image maps anything there) and list extents.
          const extentsStarted = performance.now();
          const extents = disk.extents(0, disk.size);
          expect(performance.now() - extentsStarted).toBeLessThan(OPEN_MS);
          expect(extents.reduce((n, e) => n + e.length, 0)).toBe(disk.size);
          for (const pos of [compared, Math.floor(disk.size / 2), disk.size - chunk]) {
            expect(disk.readSync(buf, pos)).toBe(Math.min(chunk, disk.size - pos));
            expect(buf.every((b) => b === 0)).toBe(true);
          }
        } else if (!region) {
          expect(disk.extents(0, disk.size).reduce((n, e) => n + e.length, 0)).toBe(disk.size);
        }
        expect(performance.now() - viewStarted).toBeLessThan(VIEW_MS);
      }
      if (entry.expect === 'eio-region') expect(eioSeen).toBeGreaterThan(0);
      if (entry.partitions) {
        // A hostile partition table: read without throwing, in bounded time, every problem listed.
        const tableStarted = performance.now();
        const volume = openVolume(img.active);
        expect(performance.now() - tableStarted).toBeLessThan(OPEN_MS);
        expect(volume, 'a partition table').toBeDefined();
        expect(volume!.table.partitions.map((p) => p.number)).toEqual(entry.partitions.numbers);
        const problems = volume!.table.problems.join('\n');
        for (const p of entry.partitions.problems) expect(problems).toContain(p);
      }
      // The views with an oracle still read right after the failures.
      for (const [view, rel] of Object.entries(entry.oracles ?? {})) {
        const disk = viewOf(img, view);
        const oracle = fs.readFileSync(abs(rel));
        const region = view === regionView ? entry.region : undefined;
        const probe = [0, chunk * 7, oracle.length - chunk].find((p) => !region || !overlaps(p, chunk, region));
        if (probe === undefined) continue;
        const into = Buffer.alloc(chunk);
        disk.readSync(into, probe);
        expect(into.equals(oracle.subarray(probe, probe + chunk))).toBe(true);
      }
    } finally {
      img.close();
    }
  });
});

describe.skipIf(!ready)('hostile catalogue: bounded memory and time', () => {
  const rssMiB = () => process.memoryUsage().rss / 2 ** 20;
  const entry = (name: string) => {
    const e = catalogue.entries.find((x) => x.name === name);
    if (!e) throw new Error(`no catalogue entry ${name}`);
    return abs(e.file);
  };

  it('l1_size 2^30 and nb_snapshots 65535 / 2^31 allocate nothing they claim', () => {
    for (const name of ['l1-size-2-30', 'l1-size-max', 'snapshots-65535', 'snapshots-2-31', 'snapshot-extra-data-huge', 'header-length-huge']) {
      openImageSync(entry('base')).close(); // warm up
      const before = rssMiB();
      for (let i = 0; i < 10; i++) expect(() => openImageSync(entry(name), { strict: true })).toThrow(QcowError);
      // Without strict the damaged snapshot tables are left out, allocating nothing either.
      for (let i = 0; i < 10; i++) {
        try {
          openImageSync(entry(name)).close();
        } catch {
          // refused: the header itself is bad
        }
      }
      expect(rssMiB() - before, name).toBeLessThan(32);
    }
  });

  it('a snapshot with l1_size 2^30 is hidden without allocating its table', () => {
    const before = rssMiB();
    for (let i = 0; i < 10; i++) {
      const img = openImageSync(entry('snapshot-l1-size-2-30'));
      expect(img.snapshots.map((s) => s.name)).toEqual(['s1']);
      expect(img.problems[0]!.why).toMatch(/l1_size 1073741824/);
      img.close();
    }
    expect(rssMiB() - before).toBeLessThan(32);
  });

  it('65535 real snapshots open quickly, in bounded memory, and each reads', () => {
    const before = rssMiB();
    const started = performance.now();
    const img = openImageSync(entry('snapshots-65535-real'));
    try {
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(img.snapshots.length).toBe(65535);
      expect(rssMiB() - before).toBeLessThan(128);
      const oracle = fs.readFileSync(entry('base').replace(/\.qcow2$/, '.raw'));
      const buf = Buffer.alloc(4096);
      const readStarted = performance.now();
      for (let i = 0; i < 65535; i += 97) {
        const d = img.snapshotDisk(img.snapshots[i]!);
        d.readSync(buf, 0);
        expect(buf.equals(oracle.subarray(0, 4096))).toBe(true);
      }
      expect(performance.now() - readStarted).toBeLessThan(10_000);
      expect(rssMiB() - before).toBeLessThan(160);
    } finally {
      img.close();
    }
  });

  it('reading 512 snapshots with their own 8 MiB L1 tables keeps a bounded number of them', () => {
    const img = openImageSync(entry('snapshots-l1-overlapping'));
    try {
      const before = rssMiB();
      const buf = Buffer.alloc(4096);
      for (const s of img.snapshots.slice(0, 200)) {
        img.snapshotDisk(s).readSync(buf, 4 * 1024 * 1024);
        expect(buf.every((x) => x === 0)).toBe(true);
      }
      // 200 tables of 8 MiB would be 1.6 GiB; the snapshot L1 cache keeps 32 MiB of them.
      expect(rssMiB() - before).toBeLessThan(128);
    } finally {
      img.close();
    }
  });

  it('a snapshot claiming a 1 PiB disk lists its extents in bounded time', () => {
    const img = openImageSync(entry('snapshot-disk-size-huge'));
    try {
      const s1 = img.snapshots.find((s) => s.name === 's1')!;
      const d = img.snapshotDisk(s1);
      expect(d.size).toBe(2 ** 50);
      const started = performance.now();
      const ext = d.extents(0, d.size);
      expect(performance.now() - started).toBeLessThan(OPEN_MS);
      expect(ext[ext.length - 1]!.start + ext[ext.length - 1]!.length).toBe(2 ** 50);
    } finally {
      img.close();
    }
  });
});

describe.skipIf(!ready)('hostile catalogue: VM states whose RAM cannot be rebuilt', () => {
  const entries = catalogue.entries.filter((e) => e.memory);
  it('has the VM-state entries the issue names', () => {
    if (!toolsAvailable('qemu-system-x86_64')) return;
    expect(entries.map((e) => e.name).sort()).toEqual(['vmstate-block-list-huge', 'vmstate-block-name-cut', 'vmstate-page-past-block', 'vmstate-ram-never-ends', 'vmstate-truncated']);
  });
  it.each(entries.map((e) => [e.name, e] as const))('%s: image.memory() is one QcowError, quickly; the VM state still reads', (_name, e) => {
    const file = abs(e.file);
    const img = openImageSync(file);
    try {
      const s = img.findSnapshot(e.memory!.snapshot)!;
      const started = performance.now();
      const before = process.memoryUsage().rss;
      expectOneLine(catchError(() => img.memory(s)), file, e.memory!.code, e.memory!.messageIncludes);
      expect(performance.now() - started).toBeLessThan(VIEW_MS);
      expect(process.memoryUsage().rss - before).toBeLessThan(64 * 2 ** 20);
      // The same error again, from the kept result, and the raw VM state is still served.
      expectOneLine(catchError(() => img.memory(s)), file, e.memory!.code, []);
      const vm = img.vmState(s)!;
      expect(vm.readSync(Buffer.alloc(4096), 0)).toBe(Math.min(4096, vm.size));
    } finally {
      img.close();
    }
  });
});
