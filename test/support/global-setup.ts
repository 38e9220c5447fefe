import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './fixtures.js';
import { toolsAvailable } from './tools.js';

/** Builds the QEMU-made fixtures once per run (the generator is a no-op when they are up to date). */
export default function setup(): void {
  if (!toolsAvailable('qemu-img', 'qemu-io', 'qemu-system-x86_64')) {
    console.warn('qemu tools missing: tests that compare with QEMU are skipped (they fail under CI=true)');
    return;
  }
  execFileSync('bash', [path.join(repoRoot, 'scripts/make-fixtures.sh')], { stdio: 'inherit', cwd: repoRoot });
  if (toolsAvailable('sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4')) execFileSync('bash', [path.join(repoRoot, 'scripts/make-partition-fixtures.sh')], { stdio: 'inherit', cwd: repoRoot });
  execFileSync('bash', [path.join(repoRoot, 'scripts/make-memory-fixtures.sh')], { stdio: 'inherit', cwd: repoRoot });
  execFileSync('bash', [path.join(repoRoot, 'scripts/make-crypt-fixtures.sh')], { stdio: 'inherit', cwd: repoRoot });
  execFileSync('bash', [path.join(repoRoot, 'scripts/make-damaged-fixtures.sh')], { stdio: 'inherit', cwd: repoRoot });
}
