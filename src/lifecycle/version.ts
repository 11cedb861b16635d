import { readFileSync } from 'node:fs';

/** The guard's own version, from package.json (next to src/ and dist/ alike). */
export const GUARD_VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
})();
