import { defineConfig } from 'vitest/config';

/** The Helm chart tests: `npm run test:chart` (needs Go and sprig, see README). */
export default defineConfig({
  test: {
    include: ['test/chart/**/*.test.ts'],
    testTimeout: 120_000,
    // The first Go build of the renderer compiles sprig from cold caches.
    hookTimeout: 300_000,
  },
});
