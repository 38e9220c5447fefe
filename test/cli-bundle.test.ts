/**
 * The commands as `npm run build` bundles them (scripts/bundle.mjs): each command one bundle in dist/cli,
 * started by its launcher from V8's code cache, its worker scripts bundled beside it and working, its
 * native addons found from there (and only loaded where needed), and a reader that closes the pipe early
 * ends a command quietly.
 */
import { type SpawnSyncReturns, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const CLI = path.join(repoRoot, 'dist/cli');
const COMMANDS = ['qcow-mount', 'qcow-info', 'qcow-export', 'qcow-diff'];
const bin = (cmd: string) => path.join(CLI, `${cmd}.js`);
const bundle = (cmd: string) => path.join(CLI, `${cmd}.bundle.js`);
/** Each command's first line: Node started without NODE_EXTRA_CA_CERTS, its file name passed on to us (src/io/trusted-ca.ts). */
const SHEBANG = '#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node';
for (const cmd of COMMANDS) if (!fs.existsSync(bin(cmd))) throw new Error(`${bin(cmd)} is missing: run \`npm run build\` first (npm test does)`);

const haveQemu = toolsAvailable('qemu-img');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
const plain = () => manifest!.images.find((i) => i.name === 'v3-c64k')!;
const oracle = (name: string) => fixturePath(manifest!.images.find((i) => i.name === name)!.views.find((v) => v.view === 'active')!.oracle!);

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-bundle-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('one bundle per command, started by its launcher', () => {
  it('the bin entries are the launchers: executable, each running its bundle and nothing else of ours', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string>; files: string[] };
    expect(Object.keys(pkg.bin).sort()).toEqual([...COMMANDS].sort());
    // dist/cli is CommonJS: the launchers and bundles; the worker scripts are ESM (.mjs).
    expect(JSON.parse(fs.readFileSync(path.join(CLI, 'package.json'), 'utf8'))).toEqual({ type: 'commonjs' });
    for (const cmd of COMMANDS) {
      expect(pkg.bin[cmd]).toBe(`./dist/cli/${cmd}.js`);
      expect(fs.statSync(bin(cmd)).mode & 0o111, cmd).not.toBe(0);
      const launcher = fs.readFileSync(bin(cmd), 'utf8');
      expect(launcher.startsWith(`${SHEBANG}\n`), cmd).toBe(true);
      expect([...launcher.matchAll(/require\(['"]([^'"]+)['"]\)/g)].map((m) => m[1]).filter((m) => !m!.startsWith('node:')), cmd).toEqual([]);
      expect(launcher, cmd).toContain(`'${cmd}.bundle.js'`);
      const js = fs.readFileSync(bundle(cmd), 'utf8');
      // Only Node's built-ins and the packages with native addons (loaded at run time) stay outside.
      const required = [...js.matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]!);
      expect(required.filter((m) => !m.startsWith('node:') && !['fuse-native', 'zstd-napi'].includes(m) && !isBuiltin(m)), cmd).toEqual([]);
      expect(js, cmd).not.toMatch(/\bimport\(["']\.\.?\//);
      expect(fs.existsSync(`${bundle(cmd)}.map`), `${cmd}.bundle.js.map`).toBe(true);
      expect(fs.existsSync(`${bundle(cmd)}.cache`), `${cmd}.bundle.js.cache`).toBe(true);
    }
  });

  it('each command starts from its code cache; without one, or with one V8 rejects, it compiles and runs', () => {
    for (const cmd of COMMANDS) {
      const r = spawnSync(bin(cmd), ['--version'], { env: { ...process.env, QCOW_CODE_CACHE: 'check' }, encoding: 'utf8' });
      expect(r.status, cmd).toBe(0);
      expect(r.stderr, cmd).toBe('code cache: used\n');
    }
    // A copy of dist/cli (and package.json, for the version) whose caches are damaged (another Node's,
    // a cut file) or gone.
    const copy = path.join(tmp, 'package', 'dist', 'cli');
    fs.cpSync(CLI, copy, { recursive: true });
    fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(tmp, 'package', 'package.json'));
    const damaged = path.join(copy, 'qcow-info.bundle.js.cache');
    const bytes = fs.readFileSync(damaged);
    bytes.fill(0x5a, 0, 64);
    fs.writeFileSync(damaged, bytes);
    fs.rmSync(path.join(copy, 'qcow-export.bundle.js.cache'));
    const version = (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
    for (const [cmd, said] of [['qcow-info', 'rejected'], ['qcow-export', 'none']] as const) {
      const r = spawnSync(path.join(copy, `${cmd}.js`), ['--version'], { env: { ...process.env, QCOW_CODE_CACHE: 'check' }, encoding: 'utf8' });
      expect(r.status, cmd).toBe(0);
      expect(r.stderr, cmd).toBe(`code cache: ${said}\n`);
      expect(r.stdout.trim(), cmd).toBe(version);
    }
  });

  it('started as a program, Node does not load NODE_EXTRA_CA_CERTS: the command is handed its name', () => {
    // Node warns when it cannot load the file at start; run through `node`, it still does (the control).
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: path.join(tmp, 'no-such-bundle.pem') };
    expect(spawnSync(process.execPath, [bin('qcow-info'), '--version'], { env, encoding: 'utf8' }).stderr).toMatch(/Ignoring extra certs/);
    for (const cmd of COMMANDS) {
      const r = spawnSync(bin(cmd), ['--version'], { env, encoding: 'utf8' });
      expect(r.status, cmd).toBe(0);
      expect(r.stderr, cmd).toBe('');
    }
    const probe = path.join(tmp, 'env-probe.js');
    fs.writeFileSync(probe, `${SHEBANG}\nconsole.log(JSON.stringify([process.env.NODE_EXTRA_CA_CERTS ?? null, process.env.QCOW_NODE_EXTRA_CA_CERTS ?? null]));\n`, { mode: 0o755 });
    expect(JSON.parse(spawnSync(probe, { env, encoding: 'utf8' }).stdout)).toEqual([null, env.NODE_EXTRA_CA_CERTS]);
    const unset = { ...process.env };
    delete unset.NODE_EXTRA_CA_CERTS;
    expect(JSON.parse(spawnSync(probe, { env: unset, encoding: 'utf8' }).stdout)).toEqual([null, '']);
  });

  it('every worker script a command starts is bundled beside it', () => {
    const started = new Set<string>();
    for (const cmd of COMMANDS) for (const m of fs.readFileSync(bundle(cmd), 'utf8').matchAll(/workerScript\("([^"]+)"\)/g)) started.add(m[1]!);
    expect([...started].sort()).toEqual(['codec/inflate-worker', 'export/read-worker', 'io/remote-worker']);
    for (const w of started) expect(fs.existsSync(path.join(CLI, `${path.basename(w)}.mjs`)), w).toBe(true);
    // A script found relative to import.meta.url would be looked for beside the bundle: use workerScript().
    for (const f of fs.readdirSync(CLI).filter((n) => /\.m?js$/.test(n))) {
      expect(fs.readFileSync(path.join(CLI, f), 'utf8').match(/new URL\(["'][^"']+\.m?js["'], (import\.meta\.url|qcowBundleUrl)\)/g), f).toBeNull();
    }
  });

  it('the source map names the source files, and --enable-source-maps maps a stack trace to them', () => {
    const map = JSON.parse(fs.readFileSync(`${bundle('qcow-export')}.map`, 'utf8')) as { sources: string[] };
    expect(map.sources).toContain('../../src/cli/qcow-export.ts');
    expect(map.sources).toContain('../../src/export/copy-disk.ts');
    // An error's stack, printed under QCOW_MOUNT_DEBUG_ERRORS: opening a missing image fails in src/io/host-file.ts.
    const env = { ...process.env, QCOW_MOUNT_DEBUG_ERRORS: '1' };
    const args = [bin('qcow-export'), '-q', path.join(tmp, 'no-such.qcow2'), path.join(tmp, 'x.raw')];
    const mapped = spawnSync(process.execPath, ['--enable-source-maps', ...args], { env, encoding: 'utf8' });
    expect(mapped.status).toBe(2);
    expect(mapped.stderr).toMatch(/\/src\/io\/host-file\.ts:\d+:\d+/);
    const plain = spawnSync(process.execPath, args, { env, encoding: 'utf8' });
    expect(plain.stderr).toMatch(/\/dist\/cli\/qcow-export\.bundle\.js:\d+:\d+/);
  });
});

describe.skipIf(!manifest)('the bundled worker scripts', () => {
  it('inflate-worker inflates a zlib cluster', async () => {
    const data = Buffer.alloc(65536);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) % 251;
    const src = zlib.deflateRawSync(data);
    const state = new SharedArrayBuffer(4);
    const out = new SharedArrayBuffer(data.length);
    const w = new Worker(path.join(CLI, 'inflate-worker.mjs'));
    try {
      const srcCopy = new ArrayBuffer(src.length);
      new Uint8Array(srcCopy).set(src);
      w.postMessage({ type: 'zlib', src: srcCopy, state, out });
      const flag = new Int32Array(state);
      // The worker flags the job in shared memory (no message): wait for the flag, as the pool does.
      expect(Atomics.wait(flag, 0, 0, 10_000)).not.toBe('timed-out');
      expect(Atomics.load(flag, 0)).toBe(1); // DONE
      expect(Buffer.from(out).equals(data)).toBe(true);
    } finally {
      await w.terminate();
    }
  });

  it("read-worker reads a view; the bytes equal QEMU's", async () => {
    const f = plain();
    const expected = fs.readFileSync(oracle(f.name));
    const length = Math.min(expected.length, 1 << 20);
    const w = new Worker(path.join(CLI, 'read-worker.mjs'), { workerData: { imagePath: fixturePath(f.image) } });
    try {
      const reply = await new Promise<{ buffer: ArrayBuffer; got?: number; error?: { message: string } }>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
        w.postMessage({ id: 1, position: 0, length, buffer: new ArrayBuffer(length) });
      });
      expect(reply.error).toBeUndefined();
      expect(reply.got).toBe(length);
      expect(Buffer.from(reply.buffer).equals(expected.subarray(0, length))).toBe(true);
    } finally {
      await w.terminate();
    }
  });
});

describe('package files in the unbundled layouts', () => {
  it('the library as tsc built it (dist/) finds its worker scripts and addons', async () => {
    const lib = (await import(path.join(repoRoot, 'dist/package-files.js'))) as typeof import('../src/package-files.js');
    expect(fileURLToPath(lib.packageRoot)).toBe(`${repoRoot}/`);
    for (const w of ['codec/inflate-worker', 'export/read-worker', 'io/remote-worker']) expect(fileURLToPath(lib.workerScript(w))).toBe(path.join(repoRoot, 'dist', `${w}.js`));
    for (const w of ['codec/inflate-worker', 'export/read-worker', 'io/remote-worker']) expect(fs.existsSync(lib.workerScript(w)), w).toBe(true);
    expect(lib.nativeAddonPath('qcow_copy')).toBe(path.join(repoRoot, 'native/build/Release/qcow_copy.node'));
  });

  it('the sources (tsx, vitest) name the same package root', async () => {
    const src = await import('../src/package-files.js');
    expect(fileURLToPath(src.packageRoot)).toBe(`${repoRoot}/`);
    expect(src.nativeAddonPath('qcow_fuse3')).toBe(path.join(repoRoot, 'native/build/Release/qcow_fuse3.node'));
  });
});

/**
 * Runs a command with a hook that lists, at exit, what the process loaded: its native addons (file
 * names) and Node's built-in modules.
 */
function loadedAtExit(cmd: string, args: string[]): { r: SpawnSyncReturns<string>; addons: string[]; builtins: string[] } {
  const hook = path.join(tmp, 'loaded-hook.cjs');
  const list = path.join(tmp, `loaded-${process.hrtime.bigint()}.json`);
  fs.writeFileSync(
    hook,
    "process.on('exit', () => require('fs').writeFileSync(process.env.LOADED_OUT, JSON.stringify({ shared: process.report.getReport().sharedObjects, modules: process.moduleLoadList })));\n",
  );
  const r = spawnSync(process.execPath, ['-r', hook, bin(cmd), ...args], { encoding: 'utf8', env: { ...process.env, LOADED_OUT: list }, timeout: 60_000 });
  const loaded = fs.existsSync(list) ? (JSON.parse(fs.readFileSync(list, 'utf8')) as { shared: string[]; modules: string[] }) : { shared: [], modules: [] };
  return {
    r,
    addons: loaded.shared.filter((s) => s.endsWith('.node')).map((s) => path.basename(s)),
    builtins: loaded.modules.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice('NativeModule '.length)),
  };
}

describe.skipIf(!manifest)('built-ins loaded where they are used (src/lazy-builtins.ts)', () => {
  it('a plain export loads neither crypto, zlib nor worker threads; --hash loads crypto', () => {
    const f = plain();
    const { r, builtins } = loadedAtExit('qcow-export', ['-q', fixturePath(f.image), path.join(tmp, 'lazy.raw')]);
    expect(r.status, r.stderr).toBe(0);
    expect(builtins).toContain('fs'); // the hook saw the run
    for (const m of ['crypto', 'zlib', 'worker_threads']) expect(builtins, m).not.toContain(m);
    const hashed = loadedAtExit('qcow-export', ['-q', '--hash', 'sha256', fixturePath(f.image), '/dev/null']);
    expect(hashed.r.status, hashed.r.stderr).toBe(0);
    expect(hashed.builtins).toContain('crypto');
  });
});

describe.skipIf(!manifest)('native addons from the bundle', () => {
  it("qcow-export finds the qcow_copy addon and its output equals QEMU's", () => {
    const built = fs.existsSync(path.join(repoRoot, 'native/build/Release/qcow_copy.node'));
    if (!built && process.env.CI === 'true') throw new Error('CI=true and the native addon is not built');
    const f = plain();
    const out = path.join(tmp, 'plain.raw');
    const { r, addons } = loadedAtExit('qcow-export', ['-q', fixturePath(f.image), out]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(oracle(f.name)))).toBe(true);
    if (built) expect(addons).toContain('qcow_copy.node');
  });

  it('qcow-mount --version and --help load no FUSE addon', () => {
    for (const args of [['--version'], ['--help']]) {
      const { r, addons } = loadedAtExit('qcow-mount', args);
      expect(r.status, r.stderr).toBe(0);
      expect(addons.filter((a) => /fuse/.test(a)), args[0]).toEqual([]);
    }
  });
});

/**
 * A FIFO whose only reader is already gone: a write to it fails with EPIPE at once, however fast the
 * command is (a real `| head -1` only breaks the pipe if head exits before the command writes).
 */
function brokenPipe(): number {
  const fifo = path.join(tmp, `fifo-${process.hrtime.bigint()}`);
  spawnSync('mkfifo', [fifo]);
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writer = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.closeSync(reader);
  return writer;
}

function runIntoBrokenPipe(cmd: string, args: string[]): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  const out = brokenPipe();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin(cmd), ...args], { stdio: ['ignore', out, 'pipe'] });
    fs.closeSync(out);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
}

describe('a reader that goes away early', () => {
  for (const cmd of COMMANDS) {
    it(`${cmd} --help into a closed pipe exits 0 without a word`, async () => {
      const r = await runIntoBrokenPipe(cmd, ['--help']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    });
  }

  it.skipIf(!manifest)('qcow-info into a closed pipe exits quietly', async () => {
    const r = await runIntoBrokenPipe('qcow-info', [fixturePath(plain().image)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  // The watch on process.stdout must not create it early: that would turn a piped fd 1 non-blocking under
  // qcow-export's own writes of the raw view (then retried on EAGAIN: slower, same bytes).
  it.skipIf(!manifest)("qcow-export IMAGE - into a pipe keeps fd 1 blocking; the bytes equal QEMU's", async () => {
    const f = plain();
    const child = spawn(process.execPath, [bin('qcow-export'), fixturePath(f.image), '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
    // The view (4 MiB) is larger than the pipe: unread, the command waits in a write on fd 1.
    await new Promise<void>((resolve) => child.stdout!.once('readable', () => resolve()));
    await new Promise((r) => setTimeout(r, 300));
    const flags = /^flags:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${child.pid}/fdinfo/1`, 'utf8'))![1]!;
    child.stdout!.on('data', (d: Buffer) => chunks.push(d));
    expect(await closed).toBe(0);
    expect(Number.parseInt(flags, 8) & fs.constants.O_NONBLOCK).toBe(0);
    expect(Buffer.concat(chunks).equals(fs.readFileSync(oracle(f.name)))).toBe(true);
  });

  it.skipIf(!manifest)('qcow-export IMAGE - still reports a broken pipe: the raw bytes were not all written', async () => {
    const r = await runIntoBrokenPipe('qcow-export', [fixturePath(plain().image), '-']);
    expect(r.stderr).toMatch(/^qcow-export: standard output: broken pipe/);
    expect(r.code).toBe(5);
  });
});
