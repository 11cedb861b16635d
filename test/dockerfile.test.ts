import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/**
 * No Docker engine runs here, so the image is not built in CI; these checks hold the
 * Dockerfile to what the README promises about it.
 */
const dockerfile = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8');
const lines = dockerfile.split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));
const stages = dockerfile.split(/^FROM /m).slice(1);

describe('Dockerfile', () => {
  it('is multi-stage, dependencies from the lockfile before sources', () => {
    expect(stages.length).toBeGreaterThanOrEqual(3);
    const lock = lines.findIndex((l) => l.includes('COPY package.json package-lock.json'));
    const src = lines.findIndex((l) => l.includes('COPY src'));
    const ci = lines.findIndex((l) => l.includes('npm ci'));
    expect(lock).toBeGreaterThanOrEqual(0);
    expect(lock).toBeLessThan(ci);
    expect(ci).toBeLessThan(src);
  });

  it('ships only compiled output and production dependencies in a minimal non-root runtime of the Active LTS (Node 26)', () => {
    const final = stages.at(-1)!;
    expect(final).toMatch(/^gcr\.io\/distroless\/nodejs26-debian13:nonroot/);
    // The build stages run the same Node line on the same Debian release.
    expect(dockerfile).toMatch(/^ARG NODE_VERSION=26$/m);
    expect(dockerfile).toMatch(/^FROM node:\$\{NODE_VERSION\}-trixie-slim AS prod-deps$/m);
    expect(final).toMatch(/COPY --from=build \/app\/dist \.\/dist/);
    expect(final).not.toMatch(/COPY src|COPY \. /);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    expect(final).toMatch(/^USER 65532:65532$/m);
    expect(final).toMatch(/^ENTRYPOINT \["\/nodejs\/bin\/node", "dist\/main\.js"\]$/m);
    expect(final).toMatch(/org\.opencontainers\.image\.source=/);
    expect(final).toMatch(/org\.opencontainers\.image\.version=/);
  });

  it('keeps the build context small', () => {
    const ignore = readFileSync(new URL('../.dockerignore', import.meta.url), 'utf8').split('\n');
    for (const p of ['node_modules', 'dist', '.git']) expect(ignore).toContain(p);
  });
});
