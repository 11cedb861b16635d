/**
 * The reinit decision, as a pure function of what the database says about a workspace's
 * latest build. It reproduces coder PR #26548 (2.34 backport #26644): a seeded
 * `prebuild_claimed` event is only right while the latest build *is* the claim build.
 */

/** The prebuilds system user: initiator of every prebuild-creation build. */
export const PREBUILDS_USER_ID = 'c42fdf75-3097-471c-8c33-fb52454d81c0';

/** `prebuilt_workspace_stage` values in a build job's input (provisionerd's enum). */
export const STAGE = { NONE: 0, CREATE: 1, CLAIM: 2 } as const;

/** What the database says about a workspace's latest build (highest build_number). */
export interface LatestBuild {
  build_number: number;
  transition: string;
  initiator_id: string;
  /** The build job's `input` jsonb, as postgres.js decodes it: any JSON value. */
  input: unknown;
}

/**
 * - `pass`: the latest build is the claim build; the event is genuine.
 * - `suppress`: a later build exists; the claim was handled long ago: answer 409.
 * - `hold`: the claim build does not exist yet; a fixed coderd would wait on pubsub.
 * - `unknown`: the data does not let us decide; fail open (pass, log, count).
 */
export type Verdict =
  | { action: 'pass'; reason: 'claim_build_is_latest' }
  | { action: 'suppress'; reason: 'claim_already_handled' }
  | { action: 'hold'; reason: 'prebuild_not_yet_claimed' }
  | { action: 'unknown'; reason: UnknownReason };

export type UnknownReason = 'no_builds' | 'input_not_object' | 'stage_not_integer' | 'stage_out_of_range';

/** Verdicts that stay true forever for a workspace (a workspace is claimed once). */
export const isFinal = (v: Verdict): boolean => v.action === 'suppress';

/** Reads the stage from a job input, or says why it cannot. */
export function stageOf(input: unknown): number | UnknownReason {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return 'input_not_object';
  const record = input as Record<string, unknown>;
  // Go omits the zero value: key absent means NONE. Jobs written before the stage enum
  // carry `is_prebuild` / `prebuild_claimed_by` instead; the fixed coderd (2.35.1) decodes
  // the input into a struct that has neither key, so they are ignored and the stage is
  // NONE there too: its answer then depends on the build's initiator alone (the prebuilds
  // user: wait; anyone else: the claim was handled).
  if (!('prebuilt_workspace_stage' in record)) return STAGE.NONE;
  const stage = record.prebuilt_workspace_stage;
  if (typeof stage !== 'number' || !Number.isInteger(stage)) return 'stage_not_integer';
  if (stage < STAGE.NONE || stage > STAGE.CLAIM) return 'stage_out_of_range';
  return stage;
}

/**
 * Decides what to do with a `prebuild_claimed` event seeded for a workspace, given that
 * workspace's latest build (or `null` when it has none).
 *
 * @example
 * decide({ build_number: 3, transition: 'stop', initiator_id: user, input: {} })
 * // => { action: 'suppress', reason: 'claim_already_handled' }
 */
export function decide(latest: LatestBuild | null): Verdict {
  if (latest === null) return { action: 'unknown', reason: 'no_builds' };
  const stage = stageOf(latest.input);
  if (typeof stage === 'string') return { action: 'unknown', reason: stage };
  if (stage === STAGE.CLAIM) return { action: 'pass', reason: 'claim_build_is_latest' };
  // Not the claim build. Either the prebuilds user still drives the workspace (the claim
  // build is not created yet: a fixed coderd waits for pubsub), or a later build exists.
  if (latest.initiator_id === PREBUILDS_USER_ID) return { action: 'hold', reason: 'prebuild_not_yet_claimed' };
  return { action: 'suppress', reason: 'claim_already_handled' };
}
