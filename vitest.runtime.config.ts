import { defineConfig } from 'vitest/config';

/** The image's runtime stage, checked without Docker: `npm run build && npm run test:runtime`. */
export default defineConfig({
  test: {
    include: ['test/runtime/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 180_000,
  },
});
