import { describe, expect, it } from 'vitest';
import { isReinitWait } from './wait.js';

const P = '/api/v2/workspaceagents/me/reinit';

describe('isReinitWait', () => {
  it.each([
    ['GET', `${P}?wait=true`, true],
    ['GET', `${P}?wait=1`, true],
    ['GET', `${P}?wait=t`, true],
    ['GET', `${P}?wait=T`, true],
    ['GET', `${P}?wait=TRUE`, true],
    ['GET', `${P}?wait=True`, true],
    ['GET', `${P}?wait=%74rue`, true],
    ['GET', `${P}?x=1&wait=true`, true],
    ['GET', `${P}?wait=true&wait=false`, true],
    ['GET', `${P}?wait=false&wait=true`, false],
    ['GET', `${P}?wait=tRUE`, false],
    ['GET', `${P}?wait=yes`, false],
    ['GET', `${P}?wait=`, false],
    ['GET', `${P}?wait`, false],
    ['GET', `${P}?wait=false`, false],
    ['GET', `${P}?wait=0`, false],
    ['GET', P, false],
    ['POST', `${P}?wait=true`, false],
    ['HEAD', `${P}?wait=true`, false],
    ['GET', `${P}/?wait=true`, false],
    ['GET', `/api/v2/workspaceagents/me/reinitx?wait=true`, false],
    ['GET', `/api/v2/workspaceagents/me/rpc?wait=true`, false],
  ])('%s %s -> %s', (method, target, expected) => {
    expect(isReinitWait(method, target)).toBe(expected);
  });
});
