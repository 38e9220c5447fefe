import fs from 'node:fs';
import { defineConfig } from 'vitest/config';

// The mount tests run once per FUSE back-end. Under CI the native one must be there (a missing addon
// fails the run); elsewhere a machine without it runs them on compat only.
const CI = process.env.CI === 'true' || process.env.CI === '1';
const nativeBuilt = fs.existsSync(new URL('./native/build/Release/qcow_fuse3.node', import.meta.url));
const mountProject = (name: string, fuse: 'native' | 'compat', order: number, exclude: string[] = []) => ({
  test: {
    name,
    // One back-end after the other: both would share fixture folders and loop devices.
    sequence: { groupOrder: order },
    globalSetup: ['test/support/global-setup.ts'],
    include: ['native-test/**/*.test.ts'],
    exclude,
    env: { QCOW_MOUNT_FUSE: fuse },
    testTimeout: 180_000,
    hookTimeout: 600_000,
    // Mount tests share /dev/fuse, loop devices and fixture folders: one file at a time.
    fileParallelism: false,
  },
});

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          globalSetup: ['test/support/global-setup.ts'],
          include: ['test/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 600_000,
        },
      },
      ...(nativeBuilt || CI ? [mountProject('native', 'native', 0)] : []),
      // The addon's own tests (fuse3-*) and those of native-only options name their back-end: no second run.
      mountProject('native-compat', 'compat', 1, ['native-test/fuse3-*.test.ts', 'native-test/mount-direct-io.test.ts']),
    ],
  },
});
