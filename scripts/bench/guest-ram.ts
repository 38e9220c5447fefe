/**
 * Memory from a VM state: reading a snapshot's guest RAM (`.ram`, rebuilt from the page index) costs
 * about what reading its VM state (`.vmstate`, the migration stream) costs. The image: a TCG VM (no
 * OS, pc, 1 GiB) with 768 MiB of incompressible data loaded into RAM, saved with savevm, so the VM
 * state is mostly page records (each 4 KiB page behind an 8-byte header).
 *
 * Measured through the library (the same Disk objects the mount serves): sequential 1 MiB reads over
 * the whole VM state, and over the 1 GiB of RAM in `.ram` (plus the indexing pass, once). Page cache
 * warm (the image is read first).
 */
import fs from 'node:fs';
import path from 'node:path';
import { createCipheriv } from 'node:crypto';
import { openImageSync } from '../../src/index.js';
import { openGuestMemory } from '../../src/memory/guest-memory.js';
import type { Disk } from '../../src/disk/disk.js';
import { startQmp } from './qmp.js';
import { GiB, MiB, WORK, log, runOk } from './util.js';

const RECIPE = 'memory-1';
const DATA_BYTES = 768 * MiB;

/** bench-work/images/memory.qcow2, built when missing or outdated. */
export async function guestRamImage(): Promise<string> {
  const dir = path.join(WORK, 'images');
  const image = path.join(dir, 'memory.qcow2');
  const stamp = `${image}.stamp`;
  if (fs.existsSync(image) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === RECIPE) return image;
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, 'memory.tmp.qcow2');
  const blob = path.join(dir, 'memory-blob.bin');
  log('building memory.qcow2 (TCG VM, 1 GiB RAM, 768 MiB of data, savevm)');
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16));
  const fd = fs.openSync(blob, 'w');
  const zeros = Buffer.alloc(8 * MiB);
  for (let done = 0; done < DATA_BYTES; done += zeros.length) fs.writeSync(fd, cipher.update(zeros));
  fs.closeSync(fd);
  fs.rmSync(tmp, { force: true });
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, '64M']);
  const qmp = await startQmp(['-S', '-machine', 'pc,accel=tcg', '-m', '1G', '-drive', `file=${tmp},if=none,id=d0,format=qcow2,cache=unsafe`, '-device', `loader,file=${blob},addr=0x10000000,force-raw=on`]);
  try {
    await qmp.execute('human-monitor-command', { 'command-line': 'savevm s1' });
  } finally {
    await qmp.quit();
  }
  fs.rmSync(blob);
  fs.renameSync(tmp, image);
  fs.writeFileSync(stamp, RECIPE);
  return image;
}

function readAll(disk: Disk, length: number): number {
  const buf = Buffer.allocUnsafe(MiB);
  const t0 = process.hrtime.bigint();
  for (let p = 0; p < length; p += buf.length) disk.readSync(buf.length <= length - p ? buf : buf.subarray(0, length - p), p);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export interface GuestRamBench {
  vmStateBytes: number;
  ramBytes: number;
  indexSeconds: number;
  indexBytes: number;
  vmstateMBs: number;
  ramMBs: number;
}

export async function benchGuestRam(rounds = 5): Promise<GuestRamBench> {
  const file = await guestRamImage();
  fs.readFileSync(file); // page cache warm
  const image = openImageSync(file);
  try {
    const snapshot = image.snapshots[0]!;
    const vmState = image.vmState(snapshot)!;
    const ctx = { file, what: 'snapshot s1 VM state' };
    const indexTimes: number[] = [];
    let memory = openGuestMemory(vmState, ctx);
    for (let i = 0; i < rounds; i++) {
      const t0 = process.hrtime.bigint();
      memory = openGuestMemory(vmState, ctx);
      indexTimes.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const ram = memory.ram!;
    const ramBytes = GiB;
    const vm: number[] = [];
    const rm: number[] = [];
    for (let i = 0; i < rounds; i++) {
      vm.push(vmState.size / 1e6 / readAll(vmState, vmState.size));
      rm.push(ramBytes / 1e6 / readAll(ram, ramBytes));
    }
    return { vmStateBytes: vmState.size, ramBytes, indexSeconds: median(indexTimes), indexBytes: memory.layout.indexBytes, vmstateMBs: median(vm), ramMBs: median(rm) };
  } finally {
    image.close();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const r = await benchGuestRam();
  console.log(
    `VM state ${(r.vmStateBytes / MiB).toFixed(0)} MiB: .vmstate sequential ${r.vmstateMBs.toFixed(0)} MB/s; .ram (1 GiB) ${r.ramMBs.toFixed(0)} MB/s; indexing ${r.indexSeconds.toFixed(2)} s, index ${r.indexBytes} bytes (medians of 5)`,
  );
}
