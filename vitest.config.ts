import { defineConfig } from 'vitest/config';

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
      {
        test: {
          name: 'native',
          globalSetup: ['test/support/global-setup.ts'],
          include: ['native-test/**/*.test.ts'],
          testTimeout: 180_000,
          hookTimeout: 600_000,
          // Mount tests share /dev/fuse, loop devices and fixture folders: one file at a time.
          fileParallelism: false,
        },
      },
    ],
  },
});
