/** Builds native/ (binding.gyp and src/) in another folder, as native/build.sh would, with gyp variables. */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from './fixtures.js';

/**
 * Copies native/src and binding.gyp into `dir` and runs node-gyp there (`-Dname=value` for each of
 * `defines`); returns the folder holding the built addons (`dir`/build/Release). Throws with the tail of
 * the build's output when it fails or warns.
 */
export function buildAddonVariant(dir: string, defines: Record<string, string | number>): string {
  // node-gyp as native/build.sh finds it: the one npm bundles.
  const prefix = execFileSync('npm', ['prefix', '-g'], { encoding: 'utf8' }).trim();
  const nodeGyp = path.join(prefix, 'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js');
  if (!fs.existsSync(nodeGyp)) throw new Error(`node-gyp not found at ${nodeGyp}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.cpSync(path.join(repoRoot, 'native/src'), path.join(dir, 'src'), { recursive: true });
  fs.copyFileSync(path.join(repoRoot, 'native/binding.gyp'), path.join(dir, 'binding.gyp'));
  const nodedir = path.dirname(path.dirname(process.execPath));
  const args = [nodeGyp, 'rebuild', ...(fs.existsSync(path.join(nodedir, 'include/node/node_api.h')) ? [`--nodedir=${nodedir}`] : []), '--'];
  for (const [k, v] of Object.entries(defines)) args.push(`-D${k}=${v}`);
  const r = spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8', timeout: 170_000 });
  const output = `${r.stdout}${r.stderr}`;
  if (r.status !== 0) throw new Error(`node-gyp failed: ${output.slice(-2000)}`);
  if (/warning:/.test(output)) throw new Error(`node-gyp warned: ${output.slice(-2000)}`);
  return path.join(dir, 'build/Release');
}
