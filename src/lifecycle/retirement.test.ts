import { describe, expect, it } from 'vitest';
import { isValidRange, versionRetires } from './retirement.js';

describe('versionRetires', () => {
  it.each([
    ['v2.34.6+0a1b2c3', '>=2.34.6', true],
    ['v2.34.5+abc1234', '>=2.34.6', false],
    ['v2.35.0', '>=2.34.6', true],
    ['2.34.6', '>=2.34.6 <2.35.0 || >=2.35.1', true],
    ['v2.35.0', '>=2.34.6 <2.35.0 || >=2.35.1', false],
    ['v2.34.6-rc.1', '>=2.34.6', false],
    ['v2.34.6-devel+abc', '>=2.34.0', false],
    ['garbage', '>=2.34.6', false],
    ['', '>=0.0.0', false],
  ])('%s in %s -> %s', (version, range, expected) => {
    expect(versionRetires(version, range)).toBe(expected);
  });

  it('validates ranges', () => {
    expect(isValidRange('>=2.34.6')).toBe(true);
    expect(isValidRange('>=2.34.6 <2.35.0 || >=2.35.1')).toBe(true);
    expect(isValidRange('soon')).toBe(false);
  });
});
