import type { Sql } from '../db/client.js';
import { PREBUILDS_USER_ID } from '../reinit/verdict.js';

/** Counts of the audit, over non-deleted workspaces. */
export interface AuditCounts {
  workspaces: number;
  /** Build #1 by the prebuilds user, owner no longer the prebuilds user. */
  claimed: number;
  /** Claimed, and the latest build is not the claim build: spurious reinits on unpatched coderd. */
  affected: number;
  /** Claimed, the claim build is the latest and succeeded: legitimately gets the event. */
  claimBuildLatest: number;
  /** Claimed, the claim build is the latest and failed (or was canceled). */
  claimFailed: number;
  /** Claimed, the claim build is the latest and still pending or running. */
  claimInProgress: number;
  /** Still owned by the prebuilds user. */
  unclaimedPrebuilds: number;
}

/** One affected workspace. */
export interface AffectedRow {
  workspace_id: string;
  owner_username: string;
  workspace_name: string;
  latest_build_number: number;
  latest_transition: string;
  latest_job_status: string;
  claimed_at: Date | null;
}

/**
 * The audit's SQL: one set-based statement classifies every non-deleted workspace (latest
 * build and build #1 come from the (workspace_id, build_number) unique index), a second
 * lists the first `limit` affected workspaces. Read-only; the client is injected.
 */
export function createAuditQueries(sql: Sql) {
  const classified = sql`
    WITH latest AS (
      SELECT DISTINCT ON (wb.workspace_id) wb.workspace_id, wb.build_number, wb.transition::text AS transition,
             pj.input, pj.started_at, pj.completed_at, pj.canceled_at, pj.error
      FROM workspace_builds wb JOIN provisioner_jobs pj ON pj.id = wb.job_id
      ORDER BY wb.workspace_id, wb.build_number DESC
    ), claim AS (
      SELECT DISTINCT ON (wb.workspace_id) wb.workspace_id, wb.created_at
      FROM workspace_builds wb JOIN provisioner_jobs pj ON pj.id = wb.job_id
      WHERE pj.input->'prebuilt_workspace_stage' = '2'::jsonb
      ORDER BY wb.workspace_id, wb.build_number DESC
    )
    SELECT w.id AS workspace_id, w.owner_id, w.name AS workspace_name,
           w.owner_id = ${PREBUILDS_USER_ID}::uuid AS unclaimed,
           first.initiator_id = ${PREBUILDS_USER_ID}::uuid AS from_prebuild,
           latest.build_number, latest.transition,
           coalesce(latest.input->'prebuilt_workspace_stage' = '2'::jsonb, false) AS latest_is_claim,
           CASE
             WHEN latest.completed_at IS NOT NULL AND (latest.error <> '' OR latest.canceled_at IS NOT NULL) THEN 'failed'
             WHEN latest.completed_at IS NOT NULL THEN 'succeeded'
             WHEN latest.started_at IS NULL THEN 'pending'
             ELSE 'running'
           END AS job_status,
           claim.created_at AS claimed_at
    FROM workspaces w
    JOIN workspace_builds first ON first.workspace_id = w.id AND first.build_number = 1
    JOIN latest ON latest.workspace_id = w.id
    LEFT JOIN claim ON claim.workspace_id = w.id
    WHERE NOT w.deleted`;

  return {
    /** Counts per category. */
    async counts(): Promise<AuditCounts> {
      const [row] = await sql<Array<Record<keyof AuditCounts, number>>>`
        WITH c AS (${classified})
        SELECT count(*)::int AS workspaces,
               count(*) FILTER (WHERE NOT unclaimed AND from_prebuild)::int AS claimed,
               count(*) FILTER (WHERE NOT unclaimed AND from_prebuild AND NOT latest_is_claim)::int AS affected,
               count(*) FILTER (WHERE NOT unclaimed AND from_prebuild AND latest_is_claim AND job_status = 'succeeded')::int AS "claimBuildLatest",
               count(*) FILTER (WHERE NOT unclaimed AND from_prebuild AND latest_is_claim AND job_status = 'failed')::int AS "claimFailed",
               count(*) FILTER (WHERE NOT unclaimed AND from_prebuild AND latest_is_claim AND job_status IN ('pending', 'running'))::int AS "claimInProgress",
               count(*) FILTER (WHERE unclaimed)::int AS "unclaimedPrebuilds"
        FROM c`;
      return row as AuditCounts;
    },
    /** The affected workspaces, most recently claimed first. */
    async affected(limit: number): Promise<AffectedRow[]> {
      return sql<AffectedRow[]>`
        WITH c AS (${classified})
        SELECT c.workspace_id, u.username AS owner_username, c.workspace_name,
               c.build_number AS latest_build_number, c.transition AS latest_transition,
               c.job_status AS latest_job_status, c.claimed_at
        FROM c JOIN users u ON u.id = c.owner_id
        WHERE NOT c.unclaimed AND c.from_prebuild AND NOT c.latest_is_claim
        ORDER BY c.claimed_at DESC NULLS LAST, c.workspace_id
        LIMIT ${limit}`;
    },
  };
}
