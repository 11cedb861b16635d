import { defineConfig } from 'vitest/config';

/**
 * The Helm chart tests: `npm run test:chart` builds the tools first (tools/build.sh: Helm 3 and
 * 4, etcd, kube-apiserver, from their Go modules) and needs promtool (Debian's prometheus).
 */
export default defineConfig({
  test: {
    include: ['test/chart/**/*.test.ts'],
    testTimeout: 120_000,
    // Starting etcd and kube-apiserver and installing the CRDs, on a busy 2-core machine.
    hookTimeout: 300_000,
  },
});
