/**
 * The way the README puts the commands on PATH works: `npm pack`, install the tarball into a temporary
 * prefix, then `qcow-mount --version`, a real mount and a `qcow-export` through the installed commands
 * (the bundles of dist/cli), with the bytes read through them equal to QEMU's.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, repoRoot } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, isMounted } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'npm', '/dev/fuse', 'fusermount3') && (fixturesReady() || process.env.CI === 'true');

let scratch: Scratch;
let bin: string;
let prefix: string;
const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { name: string; version: string; bin: Record<string, string> };

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('install');
  // dist/ is built already (npm test builds first): --ignore-scripts keeps `prepare` from rebuilding it
  // under the other test files' feet. A user's `npm pack` runs it.
  const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--pack-destination', scratch.root], { cwd: repoRoot, encoding: 'utf8' });
  expect(pack.status, pack.stderr).toBe(0);
  const tarball = path.join(scratch.root, `${pkg.name}-${pkg.version}.tgz`);
  expect(fs.existsSync(tarball)).toBe(true);
  prefix = scratch.path('prefix');
  // The README's command: the three install scripts approved (npm matches a tarball by its file: path).
  const allow = `--allow-scripts=file:${tarball},fuse-native,zstd-napi`;
  const install = spawnSync('npm', ['install', '-g', allow, '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], {
    cwd: scratch.root,
    encoding: 'utf8',
    timeout: 600_000,
  });
  expect(install.status, `${install.stdout}\n${install.stderr}`).toBe(0);
  expect(install.stderr, 'every install script approved').not.toMatch(/not yet covered by allowScripts/);
  bin = path.join(prefix, 'bin');
}, 660_000);

afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

describe.skipIf(!ready)('installed from the packed tarball', () => {
  it('puts every command on PATH, executable, and they answer --version', () => {
    expect(Object.keys(pkg.bin)).toEqual(expect.arrayContaining(['qcow-mount', 'qcow-info', 'qcow-export']));
    for (const cmd of Object.keys(pkg.bin)) {
      const p = path.join(bin, cmd);
      expect(fs.statSync(p).mode & 0o111, `${cmd} executable`).not.toBe(0);
      const r = spawnSync(cmd, ['--version'], { env: { ...scratch.env(), PATH: `${bin}:${process.env.PATH}` }, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
  });

  // Outside CI a machine without libfuse3-dev installs without it (and says so); under CI it must build.
  const canBuild = process.env.CI === 'true' || spawnSync('pkg-config', ['--exists', 'fuse3']).status === 0;
  it.runIf(canBuild)('built the native FUSE back-end during the install', () => {
    const addon = path.join(prefix, 'lib', 'node_modules', pkg.name, 'native', 'build', 'Release', 'qcow_fuse3.node');
    expect(fs.existsSync(addon), `${addon} (see native/build.log beside it)`).toBe(true);
  });

  it('mounts an image through the installed qcow-mount; the bytes equal QEMU\'s', () => {
    const f = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const view = f.views.find((v) => v.view === 'active')!;
    const mnt = scratch.mountPoint();
    const env = { ...scratch.env(), PATH: `${bin}:${process.env.PATH}` };
    const m = spawnSync('qcow-mount', [fixturePath(f.image), mnt], { env, encoding: 'utf8', timeout: 90_000 });
    expect(m.status, m.stderr).toBe(0);
    try {
      expect(fs.readFileSync(path.join(mnt, 'active.raw')).equals(fs.readFileSync(fixturePath(view.oracle!)))).toBe(true);
    } finally {
      const u = spawnSync('qcow-mount', ['-u', mnt], { env, encoding: 'utf8', timeout: 90_000 });
      expect(u.status, u.stderr).toBe(0);
    }
    expect(isMounted(mnt)).toBe(false);
  });

  it("exports a view through the installed qcow-export; the bytes equal QEMU's", () => {
    const f = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const view = f.views.find((v) => v.view === 'active')!;
    const out = scratch.path('export.raw');
    const env = { ...scratch.env(), PATH: `${bin}:${process.env.PATH}` };
    const r = spawnSync('qcow-export', ['-q', fixturePath(f.image), out], { env, encoding: 'utf8', timeout: 90_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(view.oracle!)))).toBe(true);
  });

  it('installed the bundles: a launcher, a bundle and its code cache per command, the worker scripts beside them', () => {
    const cli = path.join(prefix, 'lib', 'node_modules', pkg.name, 'dist', 'cli');
    const files = fs.readdirSync(cli).filter((f) => !f.endsWith('.map')).sort();
    const commands = Object.keys(pkg.bin).flatMap((c) => [`${c}.js`, `${c}.bundle.js`, `${c}.bundle.js.cache`]);
    expect(files).toEqual([...commands, 'package.json', 'inflate-worker.mjs', 'read-worker.mjs', 'remote-worker.mjs'].sort());
    // The installed commands start from the code caches the build made (the same Node here).
    const env = { ...scratch.env(), PATH: `${bin}:${process.env.PATH}`, QCOW_CODE_CACHE: 'check' };
    for (const c of Object.keys(pkg.bin)) expect(spawnSync(c, ['--version'], { env, encoding: 'utf8' }).stderr, c).toBe('code cache: used\n');
    // Bundled, so not installed: the commands' pure-JS dependencies.
    expect(fs.existsSync(path.join(prefix, 'lib', 'node_modules', pkg.name, 'node_modules', 'commander'))).toBe(false);
  });
});
