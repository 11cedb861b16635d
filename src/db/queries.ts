import { PREBUILDS_USER_ID, type LatestBuild } from '../reinit/verdict.js';
import type { Sql } from './client.js';

/** A workspace's latest build, as the batch statements return it. */
export interface WorkspaceLatestBuild extends LatestBuild {
  workspace_id: string;
}

/** The SQL the guard runs, one method per statement; the client is injected. */
export interface Queries {
  /**
   * The latest build (highest build_number) of each workspace with its job input, in one
   * statement for many workspaces. Workspaces without builds are absent from the result.
   */
  latestBuilds(workspaceIds: readonly string[]): Promise<Map<string, LatestBuild>>;
  /**
   * One page of the cache warm-up: the latest build of up to `limit` workspaces that were
   * created as prebuilds (build #1 by the prebuilds user) and have a later build not
   * initiated by the prebuilds user, in workspace id order after `after`.
   */
  claimedPrebuildsPage(after: string | null, limit: number): Promise<WorkspaceLatestBuild[]>;
}

/** The smallest uuid: keyset pagination starts after it. */
const NIL_UUID = '00000000-0000-0000-0000-000000000000';

/**
 * Binds the guard's statements to a client. Both statements touch only workspace_builds
 * (workspace_id, build_number, transition, initiator_id, job_id) and provisioner_jobs
 * (id, input): exactly the least-privilege grants (sql/least-privilege-role.sql). The
 * latest build of each workspace comes from the unique (workspace_id, build_number) index,
 * one backward index probe per workspace (LATERAL ... ORDER BY build_number DESC LIMIT 1).
 */
export function createQueries(sql: Sql): Queries {
  /** The latest build `lb` and its job `pj` of the workspace `w.workspace_id`. */
  const latestBuildOfW = sql`
    CROSS JOIN LATERAL (
      SELECT wb.build_number, wb.transition, wb.initiator_id, wb.job_id
      FROM workspace_builds wb
      WHERE wb.workspace_id = w.workspace_id
      ORDER BY wb.build_number DESC
      LIMIT 1
    ) lb
    JOIN provisioner_jobs pj ON pj.id = lb.job_id`;
  const LATEST_COLUMNS = sql`lb.build_number, lb.transition::text AS transition, lb.initiator_id, pj.input`;
  return {
    async latestBuilds(workspaceIds) {
      const out = new Map<string, LatestBuild>();
      if (workspaceIds.length === 0) return out;
      // The ids travel as one text literal of a uuid[]: postgres.js needs no array type
      // lookup (fetch_types is off) and the statement stays one prepared shape.
      const rows = await sql<WorkspaceLatestBuild[]>`
        SELECT w.workspace_id, ${LATEST_COLUMNS}
        FROM unnest(${`{${workspaceIds.join(',')}}`}::uuid[]) AS w(workspace_id)
        ${latestBuildOfW}`;
      for (const { workspace_id, ...latest } of rows) out.set(workspace_id, latest);
      return out;
    },
    async claimedPrebuildsPage(after, limit) {
      return sql<WorkspaceLatestBuild[]>`
        SELECT w.workspace_id, ${LATEST_COLUMNS}
        FROM workspace_builds w
        ${latestBuildOfW}
        WHERE w.build_number = 1
          AND w.initiator_id = ${PREBUILDS_USER_ID}::uuid
          AND w.workspace_id > ${after ?? NIL_UUID}::uuid
          AND lb.build_number > 1
          AND lb.initiator_id <> ${PREBUILDS_USER_ID}::uuid
        ORDER BY w.workspace_id
        LIMIT ${limit}`;
    },
  };
}
