/**
 * Real mounts of encrypted (LUKS, legacy AES) and qcow v1 images: every file equals QEMU's bytes, keys
 * come from -k files or standard input and never reach the daemon's argv, environment or log, and an
 * encrypted image without a key (or with a wrong LUKS passphrase) is refused before anything is mounted.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cryptFixtures, cryptFixturesReady, cryptPath, type CryptFixture } from '../test/support/crypt-fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, daemonsFor, ensureBuilt, isMounted } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (cryptFixturesReady() || process.env.CI === 'true');
const PASSPHRASES = ['correct horse', 'battery staple!', '0123456789abcdefXYZ'];
const chosen = ['luks-snapshots', 'chain-luks-v1aes', 'aes-qcow2', 'v1-compressed', 'luks-datafile'];

let scratch: Scratch;
beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('crypt');
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

function keyArgs(fx: CryptFixture): string[] {
  return fx.keys ? fx.keys.split(',').flatMap((k) => ['-k', cryptPath(k)]) : [];
}

function sameFile(a: string, b: string): boolean {
  return fs.readFileSync(a).equals(fs.readFileSync(b));
}

describe.skipIf(!ready)('mounting encrypted and qcow v1 images', () => {
  it.each(chosen)('%s: every file equals QEMU output; no secret in argv, environment, log or info.json', (name) => {
    const fx = cryptFixtures().find((f) => f.name === name)!;
    const mnt = scratch.mountPoint(name);
    scratch.mount(cryptPath(fx.image), mnt, keyArgs(fx));
    try {
      expect(sameFile(path.join(mnt, 'active.raw'), cryptPath(fx.oracle))).toBe(true);
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { format: string; encrypt: { unlocked: boolean } | null; snapshots: { name: string; files: { raw: string } }[] };
      expect(info.format).toBe(fx.format);
      for (const s of fx.snapshots) {
        const file = info.snapshots.find((x) => x.name === s.name)!.files.raw;
        expect(sameFile(path.join(mnt, file), cryptPath(s.oracle)), `${name} ${s.name}`).toBe(true);
      }
      const infoText = fs.readFileSync(path.join(mnt, 'info.json'), 'utf8');
      const [pid] = daemonsFor(mnt);
      expect(pid).toBeDefined();
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8');
      const logs = fs.existsSync(scratch.stateDir) ? fs.readdirSync(scratch.stateDir).filter((f) => f.endsWith('.log')).map((f) => fs.readFileSync(path.join(scratch.stateDir, f), 'utf8')).join('\n') : '';
      for (const secret of PASSPHRASES) {
        for (const [where, text] of [['argv', cmdline], ['environment', environ], ['log', logs], ['info.json', infoText]]) {
          expect(text.includes(secret), `${secret} in the daemon's ${where}`).toBe(false);
        }
      }
      if (fx.keys) expect(info.encrypt?.unlocked ?? true).toBe(true);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });

  it('reads the key from standard input with -k -', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-aes256-xts')!;
    const mnt = scratch.mountPoint('stdin');
    const r = scratch.cli(['-k', '-', cryptPath(fx.image), mnt], { input: fs.readFileSync(cryptPath('key-a')) });
    expect(r.status, r.stderr).toBe(0);
    try {
      expect(sameFile(path.join(mnt, 'active.raw'), cryptPath(fx.oracle))).toBe(true);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });

  it('without a key: one line naming -k, exit 2, nothing mounted', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-aes256-xts')!;
    const mnt = scratch.mountPoint('nokey');
    const r = scratch.cli([cryptPath(fx.image), mnt]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/is encrypted.*-k FILE/);
    expect(isMounted(mnt)).toBe(false);
  });

  it('a wrong LUKS passphrase: "no key slot of FILE opens with this passphrase", exit 2, nothing mounted', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-aes256-xts')!;
    const mnt = scratch.mountPoint('wrong');
    const r = scratch.cli(['-k', cryptPath('key-wrong'), cryptPath(fx.image), mnt]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`no key slot of ${cryptPath(fx.image)} opens with this passphrase`);
    expect(r.stderr).not.toContain('not the passphrase');
    expect(isMounted(mnt)).toBe(false);
  });
});
