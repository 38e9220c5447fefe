/**
 * Bundles each command, and each worker script it starts, into one ESM file in dist/cli/ (npm run build,
 * after tsc has built the library in dist/). Node then opens, stats and compiles one file at start instead
 * of ~70 modules and commander's CommonJS wrapper (bench/NOTES.md, "Start-up").
 *
 * - Where the bundled code finds its worker scripts and native addons: src/package-files.ts (QCOW_BUNDLED).
 * - Packages with native addons stay outside (fuse-native: loaded by a compat mount only; zstd-napi: at the
 *   first zstd cluster), required at run time from node_modules as before.
 * - Source maps beside each file: `node --enable-source-maps` names src/ files in stack traces.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'cli');

const entryPoints = {
  'qcow-mount': 'src/cli/qcow-mount.ts',
  'qcow-info': 'src/cli/qcow-info.ts',
  'qcow-export': 'src/cli/qcow-export.ts',
  'qcow-diff': 'src/cli/qcow-diff.ts',
  'inflate-worker': 'src/codec/inflate-worker.ts',
  'read-worker': 'src/export/read-worker.ts',
  'remote-worker': 'src/io/remote-worker.ts',
};

const result = await build({
  absWorkingDir: root,
  entryPoints,
  outdir: out,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['fuse-native', 'zstd-napi'],
  define: { QCOW_BUNDLED: 'true' },
  // The CommonJS packages inlined (commander, cli-progress) require Node's built-ins: give them require().
  banner: { js: "import { createRequire as qcowBundleRequire } from 'node:module'; const require = qcowBundleRequire(import.meta.url);" },
  sourcemap: 'linked',
  sourcesContent: false,
  legalComments: 'none',
  logLevel: 'warning',
  metafile: true,
});

for (const name of Object.keys(entryPoints)) if (name.startsWith('qcow-')) fs.chmodSync(path.join(out, `${name}.js`), 0o755);
// dist/cli holds the bundles only (tsc does not build src/cli: tsconfig.build.json); an older build's
// modules there would be packed and could be run by mistake.
const written = new Set(Object.keys(result.metafile.outputs).map((f) => path.resolve(root, f)));
for (const f of fs.readdirSync(out)) if (!written.has(path.join(out, f))) fs.rmSync(path.join(out, f), { recursive: true, force: true });
