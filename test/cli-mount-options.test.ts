import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliError, EXIT } from '../src/exit.js';
import { parseSize } from '../src/units.js';
import { parseMountOptions } from '../src/cli/mount-options.js';
import { allowOtherProblem } from '../src/mount/preflight.js';

function usageError(fn: () => unknown): CliError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).exitCode).toBe(EXIT.USAGE);
    return err as CliError;
  }
  throw new Error('expected a usage error');
}

describe('-o mount options', () => {
  it('defaults to nothing set', () => {
    expect(parseMountOptions([])).toEqual({ allowOther: false });
  });

  it('reads allow_other, uid, gid, ro and the cache sizes, across several -o', () => {
    const o = parseMountOptions(['allow_other,uid=1000', 'gid=100,ro', 'l2_cache_size=64M,cluster_cache_size=1g']);
    expect(o).toEqual({ allowOther: true, uid: 1000, gid: 100, l2CacheBytes: 64 * 2 ** 20, clusterCacheBytes: 2 ** 30 });
  });

  it('reads direct_io as a flag, and the back-end', () => {
    expect(parseMountOptions(['fuse=native,direct_io'])).toEqual({ allowOther: false, fuse: 'native', directIo: true });
    expect(usageError(() => parseMountOptions(['direct_io=1'])).message).toContain('takes no value');
  });

  it('ignores empty items and surrounding blanks; later options win', () => {
    expect(parseMountOptions([',uid=1, ,uid=2,'])).toEqual({ allowOther: false, uid: 2 });
  });

  it('refuses unknown options by name', () => {
    const err = usageError(() => parseMountOptions(['allow_other,nonsense_opt=3']));
    expect(err.message).toContain('"nonsense_opt"');
    expect(err.message).toMatch(/^unknown mount option/);
  });

  it('reads fuse_uring (a flag: no value), alone or with fuse=native; lists it among the known options', () => {
    expect(parseMountOptions(['fuse_uring'])).toEqual({ allowOther: false, fuseUring: true });
    expect(parseMountOptions(['fuse=native,fuse_uring', 'ro'])).toEqual({ allowOther: false, fuse: 'native', fuseUring: true });
    expect(usageError(() => parseMountOptions(['fuse_uring=1'])).message).toContain('takes no value');
    expect(usageError(() => parseMountOptions(['fuse_urin'])).message).toContain('fuse_uring');
  });

  it('refuses rw: the mount is read-only', () => {
    expect(usageError(() => parseMountOptions(['rw'])).message).toContain('read-only');
  });

  it('refuses bad values', () => {
    expect(usageError(() => parseMountOptions(['uid=abc'])).message).toContain('uid');
    expect(usageError(() => parseMountOptions(['uid'])).message).toContain('uid=N');
    expect(usageError(() => parseMountOptions(['gid=-1'])).message).toContain('gid');
    expect(usageError(() => parseMountOptions(['allow_other=1'])).message).toContain('takes no value');
    expect(usageError(() => parseMountOptions(['l2_cache_size='])).message).toContain('l2_cache_size');
    expect(usageError(() => parseMountOptions(['cluster_cache_size=12X'])).message).toContain('cluster_cache_size');
  });
});

describe('parseSize', () => {
  it('takes bytes and binary suffixes', () => {
    expect(parseSize('0')).toBe(0);
    expect(parseSize('65536')).toBe(65536);
    expect(parseSize('64K')).toBe(65536);
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('32M')).toBe(32 * 2 ** 20);
    expect(parseSize('2G')).toBe(2 * 2 ** 30);
    expect(parseSize('1GiB')).toBe(2 ** 30);
    expect(parseSize('1MB')).toBe(2 ** 20);
    expect(parseSize('1T')).toBe(2 ** 40);
  });

  it('refuses what is not a size', () => {
    for (const bad of ['', 'abc', '-1', '1.5M', '1P', 'M', '99999999999999999999']) {
      expect(() => parseSize(bad), bad).toThrow(CliError);
    }
  });
});

describe('allow_other needs user_allow_other for users other than root', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-mount-conf-'));
  const conf = (text: string) => {
    const p = path.join(dir, `fuse-${Math.random()}.conf`);
    fs.writeFileSync(p, text);
    return p;
  };

  it('is fine for root, or without allow_other', () => {
    expect(allowOtherProblem(true, 0, '/nonexistent')).toBeUndefined();
    expect(allowOtherProblem(false, 1000, '/nonexistent')).toBeUndefined();
  });

  it('reads /etc/fuse.conf for other users', () => {
    expect(allowOtherProblem(true, 1000, conf('# mount_max = 1000\nuser_allow_other\n'))).toBeUndefined();
    expect(allowOtherProblem(true, 1000, conf('#user_allow_other\n'))).toMatch(/needs user_allow_other in .*fuse-.*\.conf/);
    expect(allowOtherProblem(true, 1000, '/nonexistent/fuse.conf')).toMatch(/needs user_allow_other/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
