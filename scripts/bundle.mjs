/**
 * Bundles each command into one file in dist/cli/ (npm run build, after tsc has built the library in dist/),
 * with a small launcher that runs it through V8's code cache; each worker script a command starts is an ESM
 * bundle of its own beside it. Node then reads two files at start instead of ~70 modules, and compiles
 * none of the bundle's ~400 KiB (bench/NOTES.md, "Start-up" and "Start-up, second pass").
 *
 * dist/cli/ after a build:
 * - NAME.js: the command (bin entry): the launcher, CommonJS (dist/cli/package.json says so), see
 *   scripts/launcher.cjs;
 * - NAME.bundle.js (+ .map): the command's code, CommonJS, run by the launcher;
 * - NAME.bundle.js.cache: V8's code cache of it, written by running `NAME --version` once here;
 * - WORKER.mjs (+ .map): the worker scripts, ESM.
 *
 * Where the bundled code finds its worker scripts, native addons and launcher: src/package-files.ts
 * (QCOW_BUNDLED). Packages with native addons stay outside (fuse-native: loaded by a compat mount only;
 * zstd-napi: at the first zstd cluster), required at run time from node_modules as before. Source maps
 * beside each file: `node --enable-source-maps` names src/ files in stack traces.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'cli');

const commands = ['qcow-mount', 'qcow-info', 'qcow-export', 'qcow-diff'];
const workers = {
  'inflate-worker': 'src/codec/inflate-worker.ts',
  'read-worker': 'src/export/read-worker.ts',
  'remote-worker': 'src/io/remote-worker.ts',
};

const common = {
  absWorkingDir: root,
  outdir: out,
  bundle: true,
  platform: 'node',
  target: 'node20',
  external: ['fuse-native', 'zstd-napi'],
  sourcemap: 'linked',
  sourcesContent: false,
  legalComments: 'none',
  logLevel: 'warning',
  metafile: true,
};

const commandBuild = await build({
  ...common,
  entryPoints: Object.fromEntries(commands.map((c) => [`${c}.bundle`, `src/cli/${c}.ts`])),
  format: 'cjs',
  // The code is CommonJS (require, __filename are there); import.meta.url is the bundle's own file URL.
  define: { QCOW_BUNDLED: 'true', 'import.meta.url': 'qcowBundleUrl' },
  banner: { js: "const qcowBundleUrl = require('node:url').pathToFileURL(__filename).href;" },
});

const workerBuild = await build({
  ...common,
  entryPoints: workers,
  format: 'esm',
  outExtension: { '.js': '.mjs' },
  define: { QCOW_BUNDLED: 'true' },
  // The CommonJS packages inlined require Node's built-ins: give them require().
  banner: { js: "import { createRequire as qcowBundleRequire } from 'node:module'; const require = qcowBundleRequire(import.meta.url);" },
});

// The sources' first line (#!...) would be a syntax error inside the launcher's function wrapper; a
// comment of the same length keeps the source map's lines.
for (const c of commands) {
  const file = path.join(out, `${c}.bundle.js`);
  const js = fs.readFileSync(file, 'utf8');
  if (js.startsWith('#!')) fs.writeFileSync(file, `//${js.slice(2)}`);
  fs.chmodSync(file, 0o644); // not a program: its launcher is
}

const launcher = fs.readFileSync(path.join(root, 'scripts', 'launcher.cjs'), 'utf8');
fs.writeFileSync(path.join(out, 'package.json'), `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);
for (const c of commands) {
  const file = path.join(out, `${c}.js`);
  fs.writeFileSync(file, launcher.replaceAll('__COMMAND__', c), { mode: 0o755 });
  fs.chmodSync(file, 0o755);
}

// The code caches: what V8 compiled while each command started and printed its version.
const written = new Set(
  [...Object.keys(commandBuild.metafile.outputs), ...Object.keys(workerBuild.metafile.outputs)].map((f) => path.resolve(root, f)),
);
written.add(path.join(out, 'package.json'));
for (const c of commands) {
  const cache = path.join(out, `${c}.bundle.js.cache`);
  fs.rmSync(cache, { force: true });
  const r = spawnSync(process.execPath, [path.join(out, `${c}.js`), '--version'], { env: { ...process.env, QCOW_CODE_CACHE: 'write' }, encoding: 'utf8' });
  if (r.status !== 0 || !fs.existsSync(cache)) throw new Error(`${c} --version (writing its code cache) failed: ${r.stderr || r.error}`);
  written.add(path.join(out, `${c}.js`));
  written.add(cache);
}

// dist/cli holds these files only (tsc does not build src/cli: tsconfig.build.json); an older build's
// files there would be packed and could be run by mistake.
for (const f of fs.readdirSync(out)) if (!written.has(path.join(out, f))) fs.rmSync(path.join(out, f), { recursive: true, force: true });
