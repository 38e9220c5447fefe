/**
 * Where the package's own files (worker scripts, native addons, package.json) are at run time. The same
 * code runs in three layouts:
 * - the sources under tsx or vitest: this module is src/package-files.ts;
 * - the library as tsc builds it: dist/package-files.js, each worker script in its own folder
 *   (dist/codec/inflate-worker.js);
 * - a command bundled by esbuild (scripts/bundle.mjs): every module inlined into dist/cli/qcow-NAME.bundle.js
 *   (started by its launcher dist/cli/qcow-NAME.js), so import.meta.url is the bundle's file, and each
 *   worker script is a bundle of its own beside it (dist/cli/inflate-worker.mjs). The bundler defines
 *   QCOW_BUNDLED; elsewhere it is undeclared.
 */
import { fileURLToPath } from 'node:url';

declare const QCOW_BUNDLED: boolean | undefined;
const bundled = typeof QCOW_BUNDLED !== 'undefined' && QCOW_BUNDLED;

/** The package's root folder (package.json, native/), as a file URL ending in '/'. */
export const packageRoot = new URL(bundled ? '../../' : '../', import.meta.url);

/** A worker script by its module path under src/, without extension: 'codec/inflate-worker'. */
export function workerScript(module: string): URL {
  if (bundled) return new URL(`./${module.slice(module.lastIndexOf('/') + 1)}.mjs`, import.meta.url);
  return new URL(`./${module}.js`, import.meta.url);
}

/**
 * The file that starts the command whose module is `moduleUrl` (its import.meta.url): the launcher of a
 * bundle (qcow-NAME.bundle.js is started by qcow-NAME.js), else the module itself.
 */
export function commandScript(moduleUrl: string): string {
  const file = fileURLToPath(moduleUrl);
  return bundled ? file.replace(/\.bundle\.js$/, '.js') : file;
}

/** An addon built by native/build.sh, by target name ('qcow_copy'): a path for require(). */
export function nativeAddonPath(target: string): string {
  return fileURLToPath(new URL(`native/build/Release/${target}.node`, packageRoot));
}
