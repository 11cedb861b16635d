import { describe, expect, it } from 'vitest';
import { decide, isFinal, PREBUILDS_USER_ID, type LatestBuild, type Verdict } from './verdict.js';

const USER = '6d7c1f0e-3c5e-4b53-9a1b-0f2f4f8a9c11';
const build = (over: Partial<LatestBuild>): LatestBuild => ({
  build_number: 2,
  transition: 'start',
  initiator_id: USER,
  input: { workspace_build_id: 'b', dry_run: false },
  ...over,
});
const claimInput = { workspace_build_id: 'b', dry_run: false, prebuilt_workspace_stage: 2 };

// Rows of the fix's table (reference §3), job input from older releases, and the odd data we
// must fail open on.
const table: Array<[string, LatestBuild | null, Verdict['action'], string]> = [
  ['claim build is latest, succeeded', build({ build_number: 2, input: claimInput }), 'pass', 'claim_build_is_latest'],
  ['claim build is latest, still running (pubsub event)', build({ input: claimInput }), 'pass', 'claim_build_is_latest'],
  ['claim build failed, user retried: a later start', build({ build_number: 3, input: { workspace_build_id: 'b' } }), 'suppress', 'claim_already_handled'],
  ['latest build is a stop', build({ build_number: 3, transition: 'stop', input: {} }), 'suppress', 'claim_already_handled'],
  ['latest build is a delete', build({ build_number: 9, transition: 'delete', input: {} }), 'suppress', 'claim_already_handled'],
  ['later user build with explicit stage NONE', build({ build_number: 4, input: { prebuilt_workspace_stage: 0 } }), 'suppress', 'claim_already_handled'],
  ['still a prebuilds-initiated build (claim not yet created)', build({ build_number: 1, initiator_id: PREBUILDS_USER_ID, input: { prebuilt_workspace_stage: 1 } }), 'hold', 'prebuild_not_yet_claimed'],
  ['no builds at all', null, 'unknown', 'no_builds'],
  ['input is not an object', build({ input: 'garbage' }), 'unknown', 'input_not_object'],
  ['input is an array', build({ input: [2] }), 'unknown', 'input_not_object'],
  ['input is null', build({ input: null }), 'unknown', 'input_not_object'],
  // Jobs written before the stage enum: the fixed coderd ignores these keys (stage NONE) and
  // judges by the initiator alone.
  ['legacy: a later user build (zero prebuild_claimed_by)', build({ build_number: 3, input: { workspace_build_id: 'b', dry_run: false, prebuild_claimed_by: '00000000-0000-0000-0000-000000000000' } }), 'suppress', 'claim_already_handled'],
  ['legacy: claim build initiated by the claimer', build({ input: { prebuild_claimed_by: USER } }), 'suppress', 'claim_already_handled'],
  ['legacy: claim build initiated by the prebuilds user (2025 releases)', build({ initiator_id: PREBUILDS_USER_ID, input: { prebuild_claimed_by: USER } }), 'hold', 'prebuild_not_yet_claimed'],
  ['legacy: prebuild creation build', build({ build_number: 1, initiator_id: PREBUILDS_USER_ID, input: { is_prebuild: true } }), 'hold', 'prebuild_not_yet_claimed'],
  ['legacy keys beside a stage: the stage decides', build({ input: { prebuilt_workspace_stage: 2, prebuild_claimed_by: USER } }), 'pass', 'claim_build_is_latest'],
  ['stage as a string', build({ input: { prebuilt_workspace_stage: '2' } }), 'unknown', 'stage_not_integer'],
  ['stage as a fraction', build({ input: { prebuilt_workspace_stage: 1.5 } }), 'unknown', 'stage_not_integer'],
  ['stage from the future', build({ input: { prebuilt_workspace_stage: 3 } }), 'unknown', 'stage_out_of_range'],
];

describe('decide', () => {
  it.each(table)('%s', (_name, latest, action, reason) => {
    expect(decide(latest)).toEqual({ action, reason });
  });

  it('treats only "claim already handled" as final', () => {
    expect(isFinal({ action: 'suppress', reason: 'claim_already_handled' })).toBe(true);
    expect(isFinal({ action: 'pass', reason: 'claim_build_is_latest' })).toBe(false);
    expect(isFinal({ action: 'hold', reason: 'prebuild_not_yet_claimed' })).toBe(false);
    expect(isFinal({ action: 'unknown', reason: 'no_builds' })).toBe(false);
  });
});
