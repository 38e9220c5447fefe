/**
 * Where x86 `pc` (i440fx) and `q35` machines put their RAM blocks in guest-physical memory, by QEMU's
 * rules (hw/i386/pc_piix.c pc_init1, hw/i386/pc_q35.c pc_q35_init): main RAM (`pc.ram`) from 0 up to
 * the low-memory limit, the rest from 4 GiB; the BIOS (`pc.bios`) just below 4 GiB. The limit depends
 * on the machine type, the RAM size and the `max-ram-below-4g` machine option, which the stream does
 * not record: a caller who knows it passes it.
 *
 * Other blocks are left out: option ROMs and `pc.rom` are shadowed into RAM by the firmware (their
 * legacy window 0xC0000-0xFFFFF then reads from `pc.ram`, which is what we serve), device memory such
 * as `vga.vram` sits at a PCI BAR the guest programmed (recorded only in device state, never parsed),
 * and `/rom@etc/...` blocks are firmware configuration files never mapped into guest memory.
 * Not modelled: QEMU >= 7.1 moving RAM above 4 GiB to 1 TiB on AMD hosts for guests near 1 TiB.
 */
import type { RamBlockInfo } from '../format/migration-stream.js';

export const FOUR_GIB = 0x1_0000_0000;
export const MAIN_RAM_BLOCK = 'pc.ram';
export const BIOS_BLOCK = 'pc.bios';
/** QEMU refuses a BIOS image larger than this (hw/i386/x86.c x86_bios_rom_init). */
const MAX_BIOS_BYTES = 16 * 1024 * 1024;

/** One stretch of guest-physical memory backed by a RAM block. */
export interface PhysicalRange {
  address: number;
  length: number;
  block: string;
  blockOffset: number;
}

export interface PhysicalMap {
  /** `i440fx` for `pc-i440fx-*` / `pc-*`, `q35` for `pc-q35-*`. */
  chipset: 'i440fx' | 'q35';
  /** Bytes of main RAM below 4 GiB; the rest starts at 4 GiB. */
  ramBelow4g: number;
  /** Whether that came from QEMU's default rule or the caller's `max-ram-below-4g`. */
  ramBelow4gFrom: 'machine-default' | 'max-ram-below-4g';
  /** In address order, without overlaps. */
  ranges: PhysicalRange[];
  /** Blocks with no place in the map, with why. */
  leftOut: { block: string; why: string }[];
}

export interface MachineRules {
  chipset: 'i440fx' | 'q35';
  /** i440fx machine types after 1.7 move the split down to 3 GiB for gigabyte alignment. */
  gigabyteAlign: boolean;
}

/** The rules for a machine type as the stream names it (resolved, e.g. `pc-i440fx-7.2`), if known. */
export function x86MachineRules(machineType: string): MachineRules | undefined {
  if (machineType === 'q35' || machineType.startsWith('pc-q35-')) return { chipset: 'q35', gigabyteAlign: true };
  if (machineType === 'pc') return { chipset: 'i440fx', gigabyteAlign: true };
  const version = /^pc-(?:i440fx-)?(\d+)\.(\d+)$/.exec(machineType);
  if (version) {
    const major = Number(version[1]);
    const minor = Number(version[2]);
    return { chipset: 'i440fx', gigabyteAlign: major > 1 || (major === 1 && minor > 7) };
  }
  // Distribution machine types (pc-i440fx-rhel7.6.0) are all recent.
  if (machineType.startsWith('pc-i440fx-')) return { chipset: 'i440fx', gigabyteAlign: true };
  return undefined;
}

/** QEMU's low-memory size for this machine and RAM size (`maxRamBelow4g`: the machine option, if set). */
export function ramBelow4g(rules: MachineRules, ramSize: number, maxRamBelow4g?: number): number {
  let lowmem: number;
  if (rules.chipset === 'i440fx') {
    const max = maxRamBelow4g ?? 0xe0000000;
    lowmem = max;
    if (ramSize >= max && rules.gigabyteAlign && lowmem > 0xc0000000) lowmem = 0xc0000000;
  } else {
    lowmem = ramSize >= 0xb0000000 ? 0x80000000 : 0xb0000000;
    if (lowmem > (maxRamBelow4g ?? FOUR_GIB)) lowmem = maxRamBelow4g ?? FOUR_GIB;
  }
  return ramSize >= lowmem ? lowmem : ramSize;
}

/**
 * The physical map for these blocks, or why there is none (an unknown machine type, no `pc.ram`).
 * `maxRamBelow4g` is the VM's `max-ram-below-4g` machine option, when the caller knows it.
 */
export function x86PhysicalMap(machineType: string | undefined, blocks: readonly RamBlockInfo[], maxRamBelow4g?: number): { map: PhysicalMap } | { problem: string } {
  if (machineType === undefined) return { problem: 'the stream names no machine type (no configuration section)' };
  const rules = x86MachineRules(machineType);
  if (!rules) return { problem: `machine type "${machineType}" has no known physical memory map (x86 pc and q35 only)` };
  const main = blocks.find((b) => b.name === MAIN_RAM_BLOCK);
  if (!main) {
    return { problem: `no "${MAIN_RAM_BLOCK}" block (RAM from memory backends: ${blocks.map((b) => b.name).join(', ')}); their guest addresses are not in the stream` };
  }
  const below = ramBelow4g(rules, main.length, maxRamBelow4g);
  const ranges: PhysicalRange[] = [{ address: 0, length: below, block: main.name, blockOffset: 0 }];
  if (main.length > below) ranges.push({ address: FOUR_GIB, length: main.length - below, block: main.name, blockOffset: below });
  const leftOut: PhysicalMap['leftOut'] = [];
  for (const b of blocks) {
    if (b === main || b.length === 0) continue;
    if (b.name === BIOS_BLOCK) {
      if (b.length <= MAX_BIOS_BYTES && FOUR_GIB - b.length >= below) {
        ranges.push({ address: FOUR_GIB - b.length, length: b.length, block: b.name, blockOffset: 0 });
      } else {
        leftOut.push({ block: b.name, why: 'does not fit below 4 GiB above the low RAM' });
      }
      continue;
    }
    leftOut.push({ block: b.name, why: leftOutReason(b.name) });
  }
  ranges.sort((a, b) => a.address - b.address);
  return {
    map: {
      chipset: rules.chipset,
      ramBelow4g: below,
      ramBelow4gFrom: maxRamBelow4g === undefined ? 'machine-default' : 'max-ram-below-4g',
      ranges,
      leftOut,
    },
  };
}

function leftOutReason(name: string): string {
  if (name.startsWith('/rom@')) return 'firmware configuration data, not mapped in guest memory';
  if (name === 'pc.rom' || name.endsWith('.rom')) return 'option ROM: the firmware shadows it into RAM';
  return 'device memory at an address the guest programmed (device state is not parsed)';
}
