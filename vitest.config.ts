import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // The chart tests (npm run test:chart) and the runtime-stage check (npm run
    // test:runtime, after the build) run on their own.
    exclude: ['test/chart/**', 'test/runtime/**', 'node_modules/**'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration files each start servers and a database of their own; two cores.
    maxWorkers: 2,
  },
});
