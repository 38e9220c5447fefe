/**
 * A short, fixed-seed run of the fuzzer through a real mount (scripts/fuzz-mount.ts) on the back-end this
 * project runs (QCOW_MOUNT_FUSE): mutants of the hostile catalogue's valid images are mounted, every file
 * read whole and in random chunks; the daemon never dies or stalls, reads give bytes or EIO, info.json
 * parses, views QEMU still reads equal its output, and unmounting leaves nothing behind.
 * Longer runs: `npm run fuzz -- --mount --seed S --iterations N`.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultHostileDir } from '../scripts/make-hostile.js';
import { formatMountFuzz, runMountFuzz } from '../scripts/fuzz-mount.js';
import { toolsAvailable } from '../test/support/tools.js';
import { ensureBuilt } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'find', '/dev/fuse', 'fusermount3', 'umount');
const fuse = process.env.QCOW_MOUNT_FUSE === 'compat' ? 'compat' : 'native';

beforeAll(() => {
  if (ready) ensureBuilt();
});

describe.skipIf(!ready)(`fuzz through a mount (fuse=${fuse})`, () => {
  it('seed 20261202: no wrong byte, stall, crash, stray errno or leftover', { timeout: 180_000 }, async () => {
    const report = await runMountFuzz({ seed: 20261202, iterations: 400, timeLimitSec: 25, fuses: [fuse], hostileDir: process.env.QCOW_HOSTILE_DIR ?? defaultHostileDir });
    console.log(formatMountFuzz(report));
    expect(report.findings, formatMountFuzz(report)).toEqual([]);
    // Enough ran to mean something: refusals, mounts, and views compared with QEMU's bytes.
    expect(report.iterations).toBeGreaterThanOrEqual(10);
    expect(report.outcomes[`${fuse} refused`] ?? 0).toBeGreaterThan(0);
    expect((report.outcomes[`${fuse} mounted`] ?? 0) + (report.outcomes[`${fuse} mounted-eio`] ?? 0)).toBeGreaterThan(0);
    expect(report.viewsCompared).toBeGreaterThan(0);
  });
});
