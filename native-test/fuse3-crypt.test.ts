/**
 * Encrypted views decrypted by the native back-end's worker threads (native/src/sector-crypt.c): for
 * every AES mode the crypt fixtures have, a first pass through JavaScript fills the map, then O_DIRECT
 * passes in 1 MiB and in 777-byte steps (requests that start and end mid-sector) are served in C; each
 * equals QEMU's converted raw, and the daemon's exit line shows C served them. Modes C does not take
 * (cast5, legacy provider; aes-192-xts, not in OpenSSL) read right, every read through JavaScript.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeFuseAvailable } from '../src/mount/fuse3-native.js';
import { cryptFixtures, cryptFixturesReady, cryptPath, makeAes192Xts } from '../test/support/crypt-fixtures.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (cryptFixturesReady() || IN_CI) && (nativeFuseAvailable() || IN_CI);

// Every LUKS mode QEMU made here with AES, LUKS snapshots (4 KiB clusters) and an external data file
// (host IVs), legacy AES with a snapshot (guest IVs), and a LUKS overlay over a LUKS base (the base
// through JavaScript).
const NATIVE = ['luks-aes256-xts', 'luks-aes128-xts', 'luks-aes128-cbc-plain', 'luks-aes256-cbc-plain64', 'luks-aes128-cbc-essiv', 'luks-aes256-ecb', 'luks-aes256-ctr', 'luks-snapshots', 'luks-datafile', 'aes-qcow2', 'chain-luks-luks'];

let scratch: Scratch;
beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('fuse3c');
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

function readDirect(file: string, bs: string): Buffer {
  return execFileSync('dd', [`if=${file}`, `bs=${bs}`, 'iflag=direct', 'status=none'], { maxBuffer: 1 << 30 });
}

/** A fixture's file: relative to the crypt fixtures, or absolute (an image made by the test). */
const at = (file: string) => (path.isAbsolute(file) ? file : cryptPath(file));

type Fixture = { name: string; image: string; keys: string; oracle: string; snapshots: { name: string; oracle: string }[] };

/** Mounts a crypt fixture natively, checks every view three ways, returns [native reads, JS reads]. */
async function checkViews(name: string, env?: NodeJS.ProcessEnv, fixture?: Fixture): Promise<[number, number]> {
  const fx = fixture ?? cryptFixtures().find((f) => f.name === name)!;
  const mnt = scratch.mountPoint(name);
  const log = scratch.path(`${name}.log`);
  const keys = fx.keys.split(',').flatMap((k) => ['-k', at(k)]);
  const r = scratch.cli([...keys, '-o', 'fuse=native', '--log', log, at(fx.image), mnt], { env: scratch.env(env) });
  expect(r.status, r.stderr).toBe(0);
  try {
    const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: { name: string; files: { raw: string } }[] };
    const views = [{ file: 'active.raw', oracle: fx.oracle }, ...fx.snapshots.map((s) => ({ file: info.snapshots.find((x) => x.name === s.name)!.files.raw, oracle: s.oracle }))];
    for (const v of views) {
      const want = fs.readFileSync(at(v.oracle));
      const file = path.join(mnt, v.file);
      expect(fs.readFileSync(file).equals(want), `${name} ${v.file} first pass`).toBe(true);
      expect(readDirect(file, '1M').equals(want), `${name} ${v.file} O_DIRECT 1 MiB`).toBe(true);
      expect(readDirect(file, '777').equals(want), `${name} ${v.file} O_DIRECT 777 bytes`).toBe(true);
    }
  } finally {
    expect(scratch.unmount(mnt).status).toBe(0);
  }
  await waitFor('the exit line', () => /exiting/.test(fs.readFileSync(log, 'utf8')), 10_000);
  const text = fs.readFileSync(log, 'utf8');
  const exit = /(\d+) reads served natively, (\d+) through JS/.exec(text);
  expect(exit, 'the exit line counts native and JS reads').not.toBeNull();
  expect(text).toMatch(/exiting \(0 failed reads;/);
  return [Number(exit![1]), Number(exit![2])];
}

describe.skipIf(!ready)('encrypted views decrypted in C', () => {
  it.each(NATIVE)('%s: QEMU bytes in big and unaligned O_DIRECT reads, served natively', async (name) => {
    const [native, js] = await checkViews(name);
    // The 777-byte pass alone is ~4000 reads; JavaScript serves the first pass's reads (and the
    // backing file of the chain), C the O_DIRECT passes.
    if (name === 'chain-luks-luks') {
      expect(native, `${name}: native reads`).toBeGreaterThan(0); // most of its data is in the base
    } else {
      expect(native, `${name}: native reads`).toBeGreaterThan(4000);
      expect(js, `${name}: reads through JS`).toBeLessThan(native / 10);
    }
  });

  it('aes-192-xts, made by QEMU here (OpenSSL has no AES-192-XTS, so C does not take it): QEMU bytes, every read through JavaScript', async () => {
    const dir = scratch.path('aes192');
    fs.mkdirSync(dir);
    const made = makeAes192Xts(dir);
    const [native, js] = await checkViews('aes192-xts', undefined, { name: 'aes192-xts', image: made.image, keys: made.key, oracle: made.oracle, snapshots: [] });
    expect(native).toBe(0);
    expect(js).toBeGreaterThan(1000);
  }, 60_000);

  it('cast5 (not done in C): QEMU bytes, every read through JavaScript (legacy provider in the daemon)', async () => {
    const [native, js] = await checkViews('luks-cast5-cbc', { NODE_OPTIONS: '--openssl-legacy-provider' });
    expect(native).toBe(0);
    expect(js).toBeGreaterThan(4000);
  });
});
