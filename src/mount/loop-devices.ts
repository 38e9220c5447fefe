import fs from 'node:fs';
import path from 'node:path';

/** A loop device and the file it reads (as /sys/block/loopN/loop/backing_file names it). */
export interface LoopDevice {
  device: string;
  backingFile: string;
}

/**
 * Loop devices whose backing file lies under `folder`: they keep a mount busy without any process
 * holding a file (fuser shows only "kernel mount"). Read from sysfs, so no losetup is needed.
 */
export function loopDevicesUnder(folder: string, sysBlock = '/sys/block'): LoopDevice[] {
  const prefix = folder.endsWith('/') ? folder : `${folder}/`;
  let names: string[];
  try {
    names = fs.readdirSync(sysBlock).filter((n) => /^loop\d+$/.test(n));
  } catch {
    return [];
  }
  const found: LoopDevice[] = [];
  for (const name of names) {
    let backing: string;
    try {
      backing = fs.readFileSync(path.join(sysBlock, name, 'loop', 'backing_file'), 'utf8').trim();
    } catch {
      continue; // not attached
    }
    // The kernel appends " (deleted)" when the file is gone.
    const file = backing.replace(/ \(deleted\)$/, '');
    if (file.startsWith(prefix)) found.push({ device: `/dev/${name}`, backingFile: file });
  }
  return found.sort((a, b) => a.device.localeCompare(b.device, 'en', { numeric: true }));
}
