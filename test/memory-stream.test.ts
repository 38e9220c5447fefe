/**
 * The VM-state RAM reader on hand-made and damaged streams: every bad stream is one QcowError (never a
 * crash, a hang or an allocation sized by the stream's claims), and the record semantics QEMU's loader
 * has (CONTINUE across sections, the last record of a page wins, pages never sent read as zeros).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { QcowError } from '../src/errors.js';
import { type Disk, readAsPromise } from '../src/disk/disk.js';
import { openImageSync } from '../src/index.js';
import { openGuestMemory } from '../src/memory/guest-memory.js';
import { indexRam } from '../src/memory/ram-index.js';
import { repoRoot } from './support/fixtures.js';
import { prng } from './support/prng.js';

const ctx = { file: 'test.qcow2', what: 'snapshot 1 ("s1") VM state' };
const PAGE = 4096;

class BufferDisk implements Disk {
  constructor(readonly bytes: Buffer) {}
  get size(): number {
    return this.bytes.length;
  }
  readSync(into: Uint8Array, position: number): number {
    const n = Math.max(0, Math.min(into.length, this.size - position));
    this.bytes.copy(into, 0, position, position + n);
    return n;
  }
  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }
  extents(): never[] {
    return [];
  }
}

/** Writes migration-stream items (QEMU's layout, migration/savevm.c and ram.c). */
class Stream {
  private parts: Buffer[] = [];
  raw(b: Buffer | number[]): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  u8(v: number): this {
    return this.raw([v]);
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return this.raw(b);
  }
  u64(v: number | bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(v));
    return this.raw(b);
  }
  name(s: string): this {
    return this.u8(s.length).raw(Buffer.from(s, 'latin1'));
  }
  header(machine = 'pc-i440fx-7.2'): this {
    return this.raw(Buffer.from('QEVM')).u32(3).u8(7).u32(machine.length).raw(Buffer.from(machine));
  }
  start(id: number, idstr = 'ram', version = 4): this {
    return this.u8(1).u32(id).name(idstr).u32(0).u32(version);
  }
  part(id: number): this {
    return this.u8(2).u32(id);
  }
  end(id: number): this {
    return this.u8(3).u32(id);
  }
  footer(id: number): this {
    return this.u8(0x7e).u32(id);
  }
  blocks(list: [string, number][], total = list.reduce((s, [, l]) => s + l, 0)): this {
    this.u64(BigInt(total) | 0x04n);
    for (const [n, l] of list) this.name(n).u64(l);
    return this;
  }
  page(offset: number, block: string | undefined, fillByte: number): this {
    this.u64(offset + 0x08 + (block === undefined ? 0x20 : 0));
    if (block !== undefined) this.name(block);
    return this.raw(Buffer.alloc(PAGE, fillByte));
  }
  zero(offset: number, block: string | undefined): this {
    this.u64(offset + 0x02 + (block === undefined ? 0x20 : 0));
    if (block !== undefined) this.name(block);
    return this.u8(0);
  }
  eos(): this {
    return this.u64(0x10);
  }
  eof(): this {
    return this.u8(0);
  }
  get bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

function refusal(stream: Buffer): QcowError {
  try {
    indexRam(new BufferDisk(stream), ctx);
  } catch (err) {
    expect(err).toBeInstanceOf(QcowError);
    const e = err as QcowError;
    expect(e.message.startsWith('test.qcow2: snapshot 1 ("s1") VM state: ')).toBe(true);
    expect(e.message).not.toContain('\n');
    return e;
  }
  throw new Error('the stream was accepted');
}

/** A valid stream: pc.ram 4 pages + pc.bios 2 pages, CONTINUE across a section break, a re-sent page. */
function goodStream(): Stream {
  return new Stream()
    .header()
    .start(2)
    .blocks([
      ['pc.ram', 4 * PAGE],
      ['pc.bios', 2 * PAGE],
    ])
    .eos()
    .footer(2)
    .part(2)
    .page(0, 'pc.ram', 0x11)
    .zero(PAGE, undefined)
    .eos()
    .footer(2)
    .part(2)
    .page(2 * PAGE, undefined, 0x33) // continues pc.ram from the previous section
    .page(0, 'pc.bios', 0xb1)
    .page(PAGE, undefined, 0xb2)
    .page(0, 'pc.ram', 0x44) // sent again: the last record wins
    .eos()
    .footer(2)
    .end(2)
    .eos()
    .footer(2)
    .start(3, 'timer', 2) // device state: never read
    .raw(Buffer.from('device bytes of unknown length'));
}

describe('VM state RAM reader: record semantics', () => {
  it('serves pages by the last record, zeros for zero and unsent pages, pc.bios below 4 GiB', () => {
    const mem = openGuestMemory(new BufferDisk(goodStream().bytes), ctx);
    expect(mem.layout.machineType).toBe('pc-i440fx-7.2');
    expect(mem.layout.blocks.map((b) => [b.name, b.length, b.dataPages, b.zeroPages, b.unsentPages])).toEqual([
      ['pc.ram', 4 * PAGE, 3, 1, 1],
      ['pc.bios', 2 * PAGE, 2, 0, 0],
    ]);
    const ram = mem.ram as Disk;
    expect(ram.size).toBe(0x1_0000_0000);
    const low = Buffer.alloc(4 * PAGE);
    ram.readSync(low, 0);
    expect([low[0], low[PAGE - 1], low[PAGE], low[2 * PAGE], low[3 * PAGE]]).toEqual([0x44, 0x44, 0, 0x33, 0]);
    const bios = Buffer.alloc(2 * PAGE);
    ram.readSync(bios, 0x1_0000_0000 - 2 * PAGE);
    expect([bios[0], bios[PAGE]]).toEqual([0xb1, 0xb2]);
    // The core holds the same two ranges.
    const core = mem.core as Disk;
    const head = Buffer.alloc(4096);
    core.readSync(head, 0);
    expect(head.readUInt16LE(56)).toBe(3); // PT_NOTE + 2 PT_LOAD
    const firstLoad = 64 + 56;
    const offset = Number(head.readBigUInt64LE(firstLoad + 8));
    const one = Buffer.alloc(1);
    core.readSync(one, offset + 2 * PAGE);
    expect(one[0]).toBe(0x33);
  });

  it('keeps a compact index: one run for a block of zero pages, 12 bytes a run when pages alternate', () => {
    const s = new Stream().header().start(1).blocks([['pc.ram', 4096 * PAGE]]).eos().part(1);
    for (let p = 0; p < 4096; p++) s.zero(p * PAGE, p === 0 ? 'pc.ram' : undefined);
    s.eos().end(1).eos();
    expect(openGuestMemory(new BufferDisk(s.bytes), ctx).layout.indexBytes).toBe(12);

    const a = new Stream().header().start(1).blocks([['pc.ram', 512 * PAGE]]).eos().part(1);
    for (let p = 0; p < 512; p++) (p % 2 ? a.zero(p * PAGE, p === 0 ? 'pc.ram' : undefined) : a.page(p * PAGE, p === 0 ? 'pc.ram' : undefined, p & 0xff));
    a.eos().end(1).eos();
    const mem = openGuestMemory(new BufferDisk(a.bytes), ctx);
    expect(mem.layout.indexBytes).toBe(512 * 12);
    const got = Buffer.alloc(512 * PAGE);
    mem.ram?.readSync(got, 0);
    for (let p = 0; p < 512; p++) expect(got[p * PAGE + 100]).toBe(p % 2 ? 0 : p & 0xff);
  });

  it('names no physical map for other machines, and says why', () => {
    const s = new Stream().header('virt-7.2').start(1).blocks([['mach-virt.ram', PAGE]]).eos().end(1).eos();
    const mem = openGuestMemory(new BufferDisk(s.bytes), ctx);
    expect(mem.ram).toBeUndefined();
    expect(mem.layout.problem).toMatch(/machine type "virt-7.2" has no known physical memory map/);
  });
});

describe('VM state RAM reader: hostile streams', () => {
  const ram1 = (): Stream => new Stream().header().start(1).blocks([['pc.ram', PAGE]]).eos();

  it('refuses a block list larger than the VM state could hold, before allocating for it', () => {
    const e = refusal(new Stream().header().start(1).blocks([['pc.ram', 2 ** 50]]).eos().end(1).eos().bytes);
    expect(e.message).toMatch(/claims 0x4000000000000 bytes of RAM .* more than a VM state of \d+ bytes can hold/);
  });

  it('refuses block lengths that overshoot the total, an empty name, too many blocks', () => {
    expect(refusal(new Stream().header().start(1).blocks([['a', 2 * PAGE], ['b', 2 * PAGE]], 3 * PAGE).raw(Buffer.alloc(1000)).bytes).message).toMatch(/add up to more than/);
    expect(refusal(new Stream().header().start(1).blocks([['', PAGE]]).raw(Buffer.alloc(1000)).bytes).message).toMatch(/empty name/);
    const many = new Stream().header().start(1).u64(5000n * 4096n + 4n);
    for (let i = 0; i < 5000; i++) many.name(`b${i}`).u64(PAGE);
    expect(refusal(many.bytes).message).toMatch(/more than 4096 blocks/);
  });

  it('refuses a page past the end of its block, or of a block not listed', () => {
    expect(refusal(ram1().part(1).page(PAGE, 'pc.ram', 1).bytes).message).toMatch(/page at 0x1000 is past the end of ram block "pc.ram" \(0x1000 bytes\)/);
    expect(refusal(ram1().part(1).zero(0, 'nope').bytes).message).toMatch(/names ram block "nope", which the block list does not have/);
    expect(refusal(ram1().part(1).zero(0, undefined).bytes).message).toMatch(/no block was named before/);
  });

  it('refuses a block name cut off by the end of the stream', () => {
    const s = ram1().part(1).u64(0x08).u8(200).raw(Buffer.from('pc.r')).bytes;
    expect(refusal(s).message).toMatch(/the stream ends \(at 0x[0-9a-f]+ bytes\) inside a ram record/);
  });

  it('refuses a RAM section that never ends: more sections, or records, until the stream is over', () => {
    const s = ram1();
    for (let i = 0; i < 1000; i++) s.part(1).zero(0, 'pc.ram').eos().footer(1);
    expect(refusal(s.bytes).message).toMatch(/the stream ends \(at 0x[0-9a-f]+ bytes\) inside a section header/);
    expect(refusal(ram1().part(1).zero(0, 'pc.ram').eos().eof().bytes).message).toMatch(/before its RAM section does/);
    const records = ram1().part(1);
    for (let i = 0; i < 1000; i++) records.zero(0, i === 0 ? 'pc.ram' : undefined);
    expect(refusal(records.bytes).message).toMatch(/inside a ram record/);
  });

  it('refuses what it cannot skip or serve: device sections before RAM ends, XBZRLE, compressed pages', () => {
    expect(refusal(ram1().start(2, 'block', 1).bytes).message).toMatch(/section "block" \(start\) before the end of RAM/);
    expect(refusal(ram1().part(1).u64(0x40).name('pc.ram').bytes).code).toBe('EUNSUPPORTED');
    expect(refusal(ram1().part(1).u64(0x100).bytes).message).toMatch(/unsupported ram compressed page/);
    expect(refusal(new Stream().header().start(1, 'ram', 3).bytes).message).toMatch(/ram section version 3/);
  });

  it('refuses what is not a QEVM stream', () => {
    expect(refusal(Buffer.from('QFI\xfb\0\0\0\x03', 'latin1')).message).toMatch(/QEVM magic/);
    expect(refusal(Buffer.from('QEVM\0\0\0\x02', 'latin1')).message).toMatch(/version 2/);
    expect(refusal(Buffer.alloc(0)).message).toMatch(/ends .* inside the stream header/);
    expect(refusal(new Stream().raw(Buffer.from('QEVM')).u32(3).u8(7).u32(100000).bytes).message).toMatch(/machine type of 100000 bytes/);
  });

  const fixtureImage = path.join(repoRoot, 'fixtures/memory/pc-64m/disk.qcow2');
  it.skipIf(!fs.existsSync(fixtureImage))('QEMU stream cut anywhere, or with bytes flipped: a QcowError or a result, quickly', () => {
    const image = openImageSync(fixtureImage);
    try {
      const vmState = image.vmState(image.snapshots[0]) as Disk;
      const ramEnd = openGuestMemory(vmState, ctx).layout.ramEnd;
      const bytes = Buffer.alloc(ramEnd);
      vmState.readSync(bytes, 0);
      const rnd = prng(1212);
      const started = Date.now();
      for (let i = 0; i < 60; i++) {
        const cut = Math.floor(rnd() * ramEnd);
        expect(refusal(bytes.subarray(0, cut)).code).toBe('EBADIMAGE');
      }
      for (let i = 0; i < 150; i++) {
        const copy = Buffer.from(bytes);
        for (let k = 0; k < 4; k++) copy[Math.floor(rnd() * Math.min(ramEnd, 70000))] ^= 1 << Math.floor(rnd() * 8);
        try {
          openGuestMemory(new BufferDisk(copy), ctx);
        } catch (err) {
          expect(err).toBeInstanceOf(QcowError);
        }
      }
      expect(Date.now() - started).toBeLessThan(60_000);
    } finally {
      image.close();
    }
  });
});
