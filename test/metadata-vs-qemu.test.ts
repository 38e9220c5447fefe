/**
 * The header, snapshot table and backing chain as we decode them, against what `qemu-img info
 * --output=json --backing-chain` said about the same QEMU-made image.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openImage } from '../src/index.js';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img') && fixturesReady();
const images = ready ? loadManifest().images.filter((i) => typeof i.info === 'string') : [];

interface QemuSnapshot {
  id: string;
  name: string;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  'vm-state-size': number;
  icount?: number;
}
interface QemuInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
  snapshots?: QemuSnapshot[];
  'format-specific'?: {
    data: {
      compat: string;
      'compression-type'?: string;
      'lazy-refcounts'?: boolean;
      'refcount-bits': number;
      'extended-l2'?: boolean;
      corrupt?: boolean;
      'data-file'?: string;
      'data-file-raw'?: boolean;
    };
  };
}

describe.skipIf(!ready)('metadata equals qemu-img info', () => {
  it.each(images.map((i) => [i.name, i] as [string, FixtureImage]))('%s', async (_name, fixture) => {
    const chain = JSON.parse(fs.readFileSync(fixturePath(fixture.info as string), 'utf8')) as QemuInfo[];
    const image = await openImage(fixturePath(fixture.image));
    try {
      const top = chain[0]!;
      const h = image.header;
      expect(h.size).toBe(top['virtual-size']);
      expect(h.clusterSize).toBe(top['cluster-size']);
      const data = top['format-specific']!.data;
      expect(h.version === 2 ? '0.10' : '1.1').toBe(data.compat);
      expect(2 ** h.refcountOrder).toBe(data['refcount-bits']);
      if (data['compression-type'] !== undefined) expect(h.compressionType).toBe(data['compression-type']);
      expect(h.lazyRefcounts).toBe(data['lazy-refcounts'] ?? false);
      expect(h.extendedL2).toBe(data['extended-l2'] ?? false);
      expect(h.corrupt).toBe(data.corrupt ?? false);
      expect(h.dirty).toBe(top['dirty-flag'] ?? false);
      expect(h.dataFile).toBe(data['data-file']);
      expect(h.dataFileRaw).toBe(data['data-file-raw'] ?? false);
      expect(h.backingFile).toBe(top['backing-filename']);

      // Snapshot table: every field qemu-img shows.
      const theirs = top.snapshots ?? [];
      expect(image.snapshots.map((s) => s.uniqueId)).toEqual(theirs.map((s) => s.id));
      image.snapshots.forEach((s, i) => {
        const q = theirs[i]!;
        expect(s.name).toBe(q.name);
        expect(s.time).toEqual({ seconds: q['date-sec'], nanoseconds: q['date-nsec'] });
        expect(s.guestRuntime).toBe(BigInt(q['vm-clock-sec']) * 1_000_000_000n + BigInt(q['vm-clock-nsec']));
        expect(s.vmStateSize).toBe(q['vm-state-size']);
        if (q.icount !== undefined) expect(s.extraData.icount).toBe(BigInt(q.icount));
        else expect(s.extraData.icount).toBeUndefined();
      });

      // Backing chain: the same files in the same order, with the same formats and sizes.
      expect(image.backingChain.length).toBe(chain.length - 1);
      image.backingChain.forEach((link, i) => {
        const q = chain[i + 1]!;
        expect(path.basename(link.path)).toBe(path.basename(q.filename));
        expect(link.format).toBe(q.format);
        expect(link.size).toBe(q['virtual-size']);
        const above = chain[i]!;
        if (above['backing-filename-format'] !== undefined) expect(link.formatSource).toBe('header');
        else expect(link.formatSource).toBe('probed');
      });
    } finally {
      image.close();
    }
  });

  it.each(
    images.flatMap((i) => i.views.filter((v) => v.view === 'vmstate').map((v) => [`${i.name} ${v.snapshot}`, i, v] as const)),
  )('%s: the VM state is QEMU migration data of exactly vm_state_size bytes', async (_label, fixture, view) => {
    const image = await openImage(fixturePath(fixture.image));
    try {
      const snap = image.snapshots.find((s) => s.uniqueId === view.id)!;
      const vm = image.vmState(snap)!;
      expect(vm.size).toBe(snap.vmStateSize);
      expect(vm.size).toBe(view.size);
      const head = Buffer.alloc(4);
      vm.readSync(head, 0);
      expect(head.toString('latin1')).toBe('QEVM');
      if (view.vmstate_offset !== undefined) expect(snap.vmStateOffset).toBe(view.vmstate_offset);
    } finally {
      image.close();
    }
  });
});
