import type { LatestBuild } from '../reinit/verdict.js';
import type { Sql } from './client.js';

/** The SQL the guard runs, one method per statement; the client is injected. */
export interface Queries {
  /** The latest build (highest build_number) of a workspace with its job input, or null. */
  latestBuild(workspaceId: string): Promise<LatestBuild | null>;
  /** A trivial round trip, for readiness. */
  ping(): Promise<void>;
}

/**
 * Binds the guard's statements to a client. `latestBuild` touches only
 * workspace_builds (workspace_id, build_number, transition, initiator_id, job_id) and
 * provisioner_jobs (id, input): exactly the README's least-privilege grants.
 */
export function createQueries(sql: Sql): Queries {
  return {
    async latestBuild(workspaceId) {
      const rows = await sql<LatestBuild[]>`
        SELECT wb.build_number, wb.transition::text AS transition, wb.initiator_id, pj.input
        FROM workspace_builds wb
        JOIN provisioner_jobs pj ON pj.id = wb.job_id
        WHERE wb.workspace_id = ${workspaceId}::uuid
        ORDER BY wb.build_number DESC
        LIMIT 1`;
      return rows[0] ?? null;
    },
    async ping() {
      await sql`SELECT 1`;
    },
  };
}
