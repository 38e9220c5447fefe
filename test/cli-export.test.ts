/**
 * qcow-export as users run it (dist/cli/qcow-export.js, built by `npm run build`): bytes equal to QEMU's,
 * sparse output, digests, standard output, refusals, errors and signals. QEMU is the oracle: the fixture
 * oracles (made by scripts/make-fixtures.sh) and, for a fresh image, qemu-img convert run here.
 */
import { type SpawnSyncReturns, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FixtureImage, fixturePath, fixturesReady, loadManifest, repoRoot } from './support/fixtures.js';
import { hasTool, toolsAvailable } from './support/tools.js';

const BIN = path.join(repoRoot, 'dist/cli/qcow-export.js');
if (!fs.existsSync(BIN)) throw new Error(`${BIN} is missing: run \`npm run build\` first (npm test does)`);

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
if (haveQemu && !manifest) throw new Error('fixtures/manifest.json is missing: run `npm run fixtures` (vitest globalSetup builds it)');

function run(args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<Buffer> {
  return spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, maxBuffer: 1 << 30, timeout: 120_000 });
}
const text = (b: Buffer) => b.toString('utf8');

/** The command failed with exactly one line on stderr, `qcow-export: ...`, and the given code. */
function expectOneLineError(r: SpawnSyncReturns<Buffer>, code: number, pattern?: RegExp): void {
  expect(r.status, text(r.stderr)).toBe(code);
  const lines = text(r.stderr).split('\n').filter((l) => l !== '');
  expect(lines, text(r.stderr)).toHaveLength(1);
  expect(lines[0]).toMatch(/^qcow-export: \S/);
  if (pattern) expect(lines[0]).toMatch(pattern);
}

function sha256(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(1 << 22);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-export-cli-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Files left in `dir` other than the expected ones: a failure must leave no temporary file. */
const leftovers = (dir: string, expected: string[] = []) => fs.readdirSync(dir).filter((f) => !expected.includes(f));

describe('arguments, help and version', () => {
  it('--help prints usage and exits 0', () => {
    const r = run(['--help']);
    expect(r.status).toBe(0);
    expect(text(r.stdout)).toMatch(/Usage: qcow-export \[options\] <image> <output>/);
    for (const opt of ['--snapshot', '--vmstate', '--force', '--hash', '--quiet', '--version', 'Exit codes']) expect(text(r.stdout)).toContain(opt);
  });

  it('--version prints the package version', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    const r = run(['--version']);
    expect(r.status).toBe(0);
    expect(text(r.stdout).trim()).toBe(pkg.version);
  });

  it('missing arguments, unknown options and bad values exit 1 with one line', () => {
    expectOneLineError(run([]), 1, /missing required argument/);
    expectOneLineError(run(['a.qcow2']), 1, /missing required argument 'output'/);
    expectOneLineError(run(['a.qcow2', 'b.raw', '--bogus']), 1, /unknown option '--bogus'/);
    expectOneLineError(run(['a.qcow2', 'b.raw', '--hash', 'crc32']), 1, /crc32.*sha256/);
    expectOneLineError(run(['a.qcow2', 'b.raw', '--vmstate']), 1, /--vmstate needs --snapshot/);
    expectOneLineError(run(['a.qcow2', 'b.raw', 'extra']), 1, /too many arguments|unexpected/i);
  });
});

describe.skipIf(!manifest)('output equals QEMU (fixture oracles)', () => {
  const fx = (name: string): FixtureImage => {
    const f = manifest!.images.find((i) => i.name === name);
    if (!f) throw new Error(`fixture ${name} missing from the manifest`);
    return f;
  };
  const oracleOf = (f: FixtureImage, view: string, id?: string) => fixturePath(f.views.find((v) => v.view === view && (id === undefined || v.id === id))!.oracle!);

  it('the active disk, with its sha256 printed as `HEX  OUTPUT`', () => {
    const f = fx('zero-discard-backing');
    const out = path.join(tmp, 'active.raw');
    const r = run([fixturePath(f.image), out, '--hash', 'sha256']);
    expect(r.status, text(r.stderr)).toBe(0);
    const oracle = oracleOf(f, 'active');
    expect(fs.readFileSync(out).equals(fs.readFileSync(oracle))).toBe(true);
    expect(text(r.stdout)).toBe(`${sha256(oracle)}  ${out}\n`);
    expect(text(r.stderr)).toBe(''); // no progress bar: stderr is not a terminal
    fs.rmSync(out);
  });

  it('a snapshot by name and by ID (as qemu-img snapshot -a finds it), and other digests', () => {
    const f = fx('zlib-c64k');
    const view = f.views.find((v) => v.view === 'snapshot' && v.snapshot === 'partly rewritten')!;
    const byName = path.join(tmp, 'by-name.raw');
    const byId = path.join(tmp, 'by-id.raw');
    const r1 = run([fixturePath(f.image), byName, '--snapshot', 'partly rewritten', '--hash', 'md5']);
    const r2 = run([fixturePath(f.image), byId, '-s', view.id!, '--hash', 'sha512']);
    expect(r1.status, text(r1.stderr)).toBe(0);
    expect(r2.status, text(r2.stderr)).toBe(0);
    const oracle = fs.readFileSync(fixturePath(view.oracle!));
    expect(fs.readFileSync(byName).equals(oracle)).toBe(true);
    expect(fs.readFileSync(byId).equals(oracle)).toBe(true);
    expect(text(r1.stdout)).toBe(`${createHash('md5').update(oracle).digest('hex')}  ${byName}\n`);
    expect(text(r2.stdout)).toBe(`${createHash('sha512').update(oracle).digest('hex')}  ${byId}\n`);
  });

  it('a snapshot whose disk size differs from the current one (resized image)', () => {
    const f = fx('snapshots-resize');
    for (const v of f.views.filter((x) => x.view === 'snapshot')) {
      const out = path.join(tmp, `resize-${v.id}.raw`);
      const r = run([fixturePath(f.image), out, '--snapshot', v.id!]);
      expect(r.status, text(r.stderr)).toBe(0);
      expect(fs.statSync(out).size).toBe(v.size);
      expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(v.oracle!)))).toBe(true);
    }
  });

  it('snapshots with odd names, by the file name a mount shows', () => {
    const f = fx('snapshot-names');
    const v = f.views.find((x) => x.view === 'snapshot' && x.snapshot === 'a/b')!;
    const out = path.join(tmp, 'odd.raw');
    const r = run([fixturePath(f.image), out, '--snapshot', `a∕b@${v.id}`]);
    expect(r.status, text(r.stderr)).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(v.oracle!)))).toBe(true);
  });

  it('--vmstate: the snapshot VM state, QEVM first, vm_state_size bytes', () => {
    const f = manifest!.images.find((i) => i.views.some((v) => v.view === 'vmstate' && v.oracle));
    expect(f, 'a fixture with saved VM state').toBeDefined();
    for (const v of f!.views.filter((x) => x.view === 'vmstate' && x.oracle)) {
      const out = path.join(tmp, `vm-${v.id}.state`);
      const r = run([fixturePath(f!.image), out, '--snapshot', v.snapshot!, '--vmstate', '--hash', 'sha256']);
      expect(r.status, text(r.stderr)).toBe(0);
      const bytes = fs.readFileSync(out);
      expect(bytes.subarray(0, 4).toString('latin1')).toBe('QEVM');
      expect(bytes.length).toBe(v.size);
      expect(bytes.equals(fs.readFileSync(fixturePath(v.oracle!)))).toBe(true);
      expect(text(r.stdout)).toBe(`${createHash('sha256').update(bytes).digest('hex')}  ${out}\n`);
    }
  });

  it('a snapshot without VM state refuses --vmstate (exit 2, nothing written)', () => {
    const f = fx('savevm-c64k');
    const out = path.join(tmp, 'none.state');
    expectOneLineError(run([fixturePath(f.image), out, '--snapshot', 'disk-only', '--vmstate']), 2, /no saved VM state/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('`-` writes the same bytes to standard output, the digest to standard error', () => {
    const f = fx('savevm-c64k');
    const r = run([fixturePath(f.image), '-', '--snapshot', 'vm2', '--hash', 'sha256']);
    expect(r.status, text(r.stderr)).toBe(0);
    const oracle = fs.readFileSync(oracleOf(f, 'snapshot', '2'));
    expect(r.stdout.equals(oracle)).toBe(true);
    expect(text(r.stderr)).toBe(`${createHash("sha256").update(oracle).digest("hex")}  -\n`);
  });

  it('`-` through a pipe that a slow reader drains', async () => {
    const f = fx('v3-c2m');
    const child = spawn(process.execPath, [BIN, fixturePath(f.image), '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const parts: Buffer[] = [];
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      parts.push(d);
      child.stdout.pause();
      setTimeout(() => child.stdout.resume(), 1);
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code, stderr).toBe(0);
    expect(Buffer.concat(parts).equals(fs.readFileSync(oracleOf(f, 'active')))).toBe(true);
  });

  it('/dev/null: the digest only (nothing written), without --force, read on this thread or a worker', () => {
    for (const name of ['v3-c64k', 'chain-raw-qcow2-qcow2', 'zstd-c64k']) {
      const f = fx(name);
      for (const workers of ['0', '1']) {
        const r = run([fixturePath(f.image), '/dev/null', '--hash', 'sha256'], { QCOW_EXPORT_WORKERS: workers });
        expect(r.status, text(r.stderr)).toBe(0);
        expect(text(r.stdout), `${name} workers=${workers}`).toBe(`${sha256(oracleOf(f, 'active'))}  /dev/null\n`);
      }
    }
  });

  it('compressed views read on worker threads (QCOW_EXPORT_WORKERS) give the same bytes', () => {
    for (const name of ['zlib-c2m', 'zstd-c64k', 'el2-zlib-c64k', 'zlib-c512']) {
      const f = fx(name);
      for (const v of f.views.filter((x) => x.oracle)) {
        const out = path.join(tmp, `pool-${name}-${v.view}-${v.id ?? 'a'}.raw`);
        const args = [fixturePath(f.image), out, '--hash', 'sha256'];
        if (v.view !== 'active') args.push('--snapshot', v.id!);
        if (v.view === 'vmstate') args.push('--vmstate');
        const r = run(args, { QCOW_EXPORT_WORKERS: '2' });
        expect(r.status, text(r.stderr)).toBe(0);
        const oracle = fs.readFileSync(fixturePath(v.oracle!));
        expect(fs.readFileSync(out).equals(oracle), `${name} ${v.view} ${v.id}`).toBe(true);
        expect(text(r.stdout)).toBe(`${createHash('sha256').update(oracle).digest('hex')}  ${out}\n`);
        fs.rmSync(out);
      }
    }
  });

  it('a backing chain with a raw base', () => {
    const f = fx('chain-raw-qcow2-qcow2');
    const out = path.join(tmp, 'chain.raw');
    const r = run([fixturePath(f.image), out]);
    expect(r.status, text(r.stderr)).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(oracleOf(f, 'active')))).toBe(true);
  });
});

describe.skipIf(!haveQemu)('a fresh, mostly empty image against qemu-img run here', () => {
  let dir: string;
  let image: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(tmp, 'fresh-'));
    image = path.join(dir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '256M']);
    const io = (...cmds: string[]) => execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' });
    io('write -P 0x5a 0 1M', 'write -P 0x11 100M 64k', 'write -z 101M 2M', 'write -P 0x22 255M 1M');
    execFileSync('qemu-img', ['snapshot', '-c', 'before', image]);
    io('write -P 0x33 512k 1M', 'write -P 0 200M 4M', 'discard 0 256k');
  });

  it('the active disk equals `qemu-img convert -O raw`, and is sparse', () => {
    const ours = path.join(dir, 'ours.raw');
    const theirs = path.join(dir, 'theirs.raw');
    const r = run([image, ours]);
    expect(r.status, text(r.stderr)).toBe(0);
    execFileSync('qemu-img', ['convert', '-O', 'raw', image, theirs]);
    expect(fs.statSync(ours).size).toBe(256 * 2 ** 20);
    expect(sha256(ours)).toBe(sha256(theirs));
    // ~3 MiB of data in 256 MiB: the 4 MiB of written zeros at 200M (a data run, copied kernel-side
    // where the addon is built) must stay holes too.
    expect(fs.statSync(ours).blocks * 512).toBeLessThan(5 * 1024 * 1024);
    fs.rmSync(theirs);
    fs.rmSync(ours);
  });

  it('the snapshot equals copy + `qemu-img snapshot -a` + convert', () => {
    const copy = path.join(dir, 'copy.qcow2');
    const ours = path.join(dir, 'snap.raw');
    const theirs = path.join(dir, 'snap-qemu.raw');
    fs.copyFileSync(image, copy);
    execFileSync('qemu-img', ['snapshot', '-a', 'before', copy]);
    execFileSync('qemu-img', ['convert', '-O', 'raw', copy, theirs]);
    const r = run([image, ours, '--snapshot', 'before', '--hash', 'sha256']);
    expect(r.status, text(r.stderr)).toBe(0);
    const digest = sha256(theirs);
    expect(sha256(ours)).toBe(digest);
    expect(text(r.stdout)).toBe(`${digest}  ${ours}\n`);
    expect(fs.statSync(ours).blocks * 512).toBeLessThan(8 * 1024 * 1024);
  });
});

describe('refusals and errors leave nothing behind', () => {
  const someImage = () => (manifest ? fixturePath(manifest.images.find((i) => i.name === 'v3-c64k')!.image) : undefined);

  it.skipIf(!manifest)('an existing OUTPUT is not replaced without --force (exit 5), and is with it', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'exists-'));
    const out = path.join(dir, 'out.raw');
    fs.writeFileSync(out, 'precious');
    expectOneLineError(run([someImage()!, out]), 5, /already exists.*--force/);
    expect(fs.readFileSync(out, 'utf8')).toBe('precious');
    expect(leftovers(dir, ['out.raw'])).toEqual([]);
    const r = run([someImage()!, out, '--force']);
    expect(r.status, text(r.stderr)).toBe(0);
    expect(fs.statSync(out).size).toBe(manifest!.images.find((i) => i.name === 'v3-c64k')!.views[0]!.size);
    expect(leftovers(dir, ['out.raw'])).toEqual([]);
  });

  it.skipIf(!manifest)('the image itself is never an output, even with --force', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'self-'));
    const img = path.join(dir, 'disk.qcow2');
    fs.copyFileSync(someImage()!, img);
    const before = sha256(img);
    expectOneLineError(run([img, img, '--force']), 5, /refusing to write over it/);
    expect(sha256(img)).toBe(before);
    expect(leftovers(dir, ['disk.qcow2'])).toEqual([]);
  });

  it('a file that is not a qcow2 image: exit 2, one line naming it, nothing written', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'bad-'));
    const bad = path.join(dir, 'bad.qcow2');
    fs.writeFileSync(bad, 'this is not a qcow2 image, just text that is long enough to be read as a header...'.repeat(4));
    const out = path.join(dir, 'out.raw');
    expectOneLineError(run([bad, out]), 2, /bad\.qcow2: .*not a qcow2 image/);
    expectOneLineError(run([path.join(dir, 'missing.qcow2'), out]), 2, /missing\.qcow2: no such file/);
    expect(leftovers(dir, ['bad.qcow2'])).toEqual([]);
  });

  it.skipIf(!manifest)('an unknown snapshot: exit 2, the known ones listed, nothing written', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'nosnap-'));
    const out = path.join(dir, 'out.raw');
    expectOneLineError(run([someImage()!, out, '--snapshot', 'nope']), 2, /no snapshot with ID or name "nope" \(it has 1 "s1"\)/);
    expect(leftovers(dir)).toEqual([]);
  });

  it.skipIf(!manifest)('an output folder that does not exist, or a folder as output: exit 5', () => {
    expectOneLineError(run([someImage()!, path.join(tmp, 'no/such/dir/out.raw')]), 5, /no such file or directory/);
    expectOneLineError(run([someImage()!, tmp]), 5, /is a directory/);
  });

  it.skipIf(!manifest)('a corrupt region found while exporting: exit 2, no output file', () => {
    // Point the first L2 table past the end of the file: opening works, reading fails.
    const dir = fs.mkdtempSync(path.join(tmp, 'corrupt-'));
    const img = path.join(dir, 'disk.qcow2');
    fs.copyFileSync(someImage()!, img);
    const fd = fs.openSync(img, 'r+');
    const header = Buffer.alloc(48);
    fs.readSync(fd, header, 0, 48, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    entry.writeBigUInt64BE(0x8000000000000000n | 0x7fff0000n);
    fs.writeSync(fd, entry, 0, 8, l1);
    fs.closeSync(fd);
    const out = path.join(dir, 'out.raw');
    expectOneLineError(run([img, out]), 2, /disk\.qcow2: .*past the end of the file/);
    expect(leftovers(dir, ['disk.qcow2'])).toEqual([]);
  });

  it.skipIf(!manifest)('a corrupt compressed cluster, found by a worker thread: exit 2, no output file', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'corrupt-z-'));
    const img = path.join(dir, 'disk.qcow2');
    fs.copyFileSync(fixturePath(manifest!.images.find((i) => i.name === 'zlib-c64k')!.image), img);
    const fd = fs.openSync(img, 'r+');
    const header = Buffer.alloc(48);
    fs.readSync(fd, header, 0, 48, 0);
    const clusterBits = header.readUInt32BE(20);
    const l1 = Number(header.readBigUInt64BE(40));
    const l1e = Buffer.alloc(8);
    fs.readSync(fd, l1e, 0, 8, l1);
    const l2 = Buffer.alloc(2 ** clusterBits);
    fs.readSync(fd, l2, 0, l2.length, Number(l1e.readBigUInt64BE(0) & 0x00fffffffffffe00n));
    let host = -1;
    for (let i = 0; i < l2.length / 8 && host < 0; i++) {
      const e = l2.readBigUInt64BE(i * 8);
      if (e & (1n << 62n)) host = Number(e & ((1n << BigInt(62 - (clusterBits - 8))) - 1n));
    }
    expect(host).toBeGreaterThan(0);
    fs.writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host);
    fs.closeSync(fd);
    const out = path.join(dir, 'out.raw');
    expectOneLineError(run([img, out], { QCOW_EXPORT_WORKERS: '2' }), 2, /disk\.qcow2: compressed cluster at 0x[0-9a-f]+ .*zlib data is corrupt/);
    expect(leftovers(dir, ['disk.qcow2'])).toEqual([]);
    expectOneLineError(run([img, out], { QCOW_EXPORT_WORKERS: '0' }), 2, /disk\.qcow2: compressed cluster at 0x[0-9a-f]+ .*zlib data is corrupt/);
    expect(leftovers(dir, ['disk.qcow2'])).toEqual([]);
  });

  it.skipIf(!manifest?.images.some((i) => i.name === 'huge-2t'))('SIGTERM during a long export: non-zero exit, no output, no temporary file', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'signal-'));
    const out = path.join(dir, 'out.raw');
    // Hashing 2 TiB of zeros takes minutes: long enough to interrupt.
    const child = spawn(process.execPath, [BIN, fixturePath(manifest!.images.find((i) => i.name === 'huge-2t')!.image), out, '--hash', 'sha256'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise((r) => setTimeout(r, 1500));
    expect(leftovers(dir).length).toBe(1); // the temporary file, being written
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).not.toBe(0);
    expect(stderr.trim()).toMatch(/^qcow-export: interrupted by SIGTERM/);
    expect(leftovers(dir)).toEqual([]);
  });
});

/** Runs the command under a pseudo-terminal (util-linux `script`), returning what the terminal showed. */
function runOnTerminal(args: string[]): { status: number | null; screen: string } {
  const quoted = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
  const r = spawnSync('script', ['-qfec', quoted, '/dev/null'], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, screen: r.stdout };
}

describe.skipIf(!hasTool('script') || !manifest)('on a terminal', () => {
  const image = () => fixturePath(manifest!.images.find((i) => i.name === 'v3-c2m')!.image);

  it('draws a progress bar on standard error: bytes, rate, ETA; none with --quiet', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'tty-'));
    const bar = runOnTerminal([image(), path.join(dir, 'a.raw')]);
    expect(bar.status, bar.screen).toBe(0);
    expect(bar.screen).toMatch(/active\.raw .*100% .*MiB \/ .*MiB .*\/s +ETA/);
    const quiet = runOnTerminal([image(), path.join(dir, 'b.raw'), '--quiet']);
    expect(quiet.status, quiet.screen).toBe(0);
    expect(quiet.screen).toBe('');
  });

  it('refuses to write raw bytes to a terminal (exit 1)', () => {
    const r = runOnTerminal([image(), '-']);
    expect(r.status).toBe(1);
    expect(r.screen.trim()).toMatch(/^qcow-export: standard output is a terminal/);
  });
});
