import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

/** True under CI: there a missing tool fails the run instead of skipping tests. */
export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether the tests that need these tools can run. Outside CI a missing tool skips them; under CI it
 * throws, so a machine without QEMU or FUSE can never pass by skipping.
 */
export function toolsAvailable(...names: string[]): boolean {
  const missing = names.filter((n) => (n === '/dev/fuse' ? !fs.existsSync('/dev/fuse') : !hasTool(n)));
  if (missing.length === 0) return true;
  if (IN_CI) throw new Error(`CI=true and required tools are missing: ${missing.join(', ')}`);
  return false;
}
