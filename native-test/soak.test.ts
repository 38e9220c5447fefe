/**
 * A short soak (scripts/soak.ts) on the back-end this project runs (QCOW_MOUNT_FUSE): 16 readers over
 * the active disk and two snapshots of an image with compressed clusters and a compressed backing file,
 * the kernel's caches dropped under them, then fresh mounts where 16 readers released at once race the
 * first load of one L2 table. Every byte equals QEMU's; nothing stalls, dies or is left behind.
 * Longer runs: `npm run soak -- -o fuse=native|compat --minutes N`.
 */
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { formatSoak, runSoak, soakPassed } from '../scripts/soak.js';
import { repoRoot } from '../test/support/fixtures.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { ensureBuilt } from './mount-support.js';

// Dropping the kernel's caches needs root (so do the mounts); under CI not being root fails.
const root = process.getuid?.() === 0;
if (IN_CI && !root) throw new Error('CI=true: the soak needs root (it drops the kernel caches)');
const ready = toolsAvailable('qemu-img', 'qemu-io', 'fincore', '/dev/fuse') && root;
const fuse = process.env.QCOW_MOUNT_FUSE === 'compat' ? 'compat' : 'native';

beforeAll(() => {
  if (ready) ensureBuilt();
});

describe.skipIf(!ready)(`soak (fuse=${fuse})`, () => {
  it('16 readers with cache drops, and 16 readers racing an L2 table load, all get QEMU bytes', { timeout: 180_000 }, async () => {
    const report = await runSoak({ seconds: 12, readers: 16, fuse, dropEverySec: 2, raceRounds: 3, work: path.join(repoRoot, '.tmp', 'soak') });
    console.log(formatSoak(report));
    expect(soakPassed(report), formatSoak(report)).toBe(true);
    // The run meant something: reads happened, caches were dropped under them, every view was raced.
    expect(report.reads).toBeGreaterThan(1000);
    expect(report.drops).toBeGreaterThanOrEqual(1);
    expect(report.fileDrops).toBeGreaterThanOrEqual(3 * 3);
    expect(report.cacheCheck).toMatch(/^ok/);
    expect(report.raceRounds).toBe(3);
    expect(report.raceReads).toBe(3 * 16 * 16);
  });
});
