/**
 * The native addon without liburing: binding.gyp then builds fuse-uring-none.c instead of
 * fuse-uring.c, so a machine with libfuse3-dev but no liburing-dev still gets the native back-end
 * (only -o fuse_uring's rings are missing). Built in a scratch copy of native/, never over the real one.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildAddonVariant } from './support/native-build.js';
import { IN_CI, toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('pkg-config', 'make', 'cc', 'nm') && spawnSync('pkg-config', ['--exists', 'fuse3']).status === 0;

let scratch: string | undefined;
afterAll(() => {
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

describe.runIf(ready || IN_CI)('native addon build variants', () => {
  it('builds without liburing (have_liburing=0): no io_uring symbol, the same N-API module', () => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-native-build-'));
    const addon = path.join(buildAddonVariant(scratch, { have_liburing: 0 }), 'qcow_fuse3.node');
    const symbols = execFileSync('nm', ['-D', addon], { encoding: 'utf8' });
    expect(symbols).not.toMatch(/io_uring/);
    expect(symbols).toMatch(/napi_register_module_v1/);
    expect(execFileSync('ldd', [addon], { encoding: 'utf8' })).not.toMatch(/liburing/);
  }, 180_000);
});
