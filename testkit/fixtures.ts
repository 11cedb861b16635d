import { randomUUID } from 'node:crypto';
import type postgres from 'postgres';
import { PREBUILDS_USER_ID, STAGE } from '../src/reinit/verdict.js';

type Sql = postgres.Sql;
export type JobState = 'succeeded' | 'failed' | 'running' | 'pending' | 'canceled';

const ORG = '9d4e1a2b-0c3d-4e5f-8a9b-1c2d3e4f5a6b';
const TEMPLATE = '1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9';
const TEMPLATE_VERSION = '2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d';
const FILE = '3b4c5d6e-7f8a-4b9c-8d0e-2f3a4b5c6d7e';

/** Inserts a user and returns its id. */
export async function createUser(sql: Sql, username: string): Promise<string> {
  const id = randomUUID();
  await sql`INSERT INTO users (id, email, username, hashed_password, created_at, updated_at, status, login_type)
            VALUES (${id}, ${`${username}@example.com`}, ${username}, ''::bytea, now(), now(), 'active', 'password')`;
  return id;
}

/** Inserts a workspace and returns its id. */
export async function createWorkspace(sql: Sql, ownerId: string, name: string): Promise<string> {
  const id = randomUUID();
  await sql`INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id, name)
            VALUES (${id}, now(), now(), ${ownerId}, ${ORG}, ${TEMPLATE}, ${name})`;
  return id;
}

/** One build to add to a workspace. */
export interface BuildSpec {
  transition?: 'start' | 'stop' | 'delete';
  initiator: string;
  /** prebuilt_workspace_stage; omitted (as Go does for NONE) when undefined. */
  stage?: number;
  state?: JobState;
  /** Replaces the whole job input (odd data tests). */
  input?: unknown;
  error?: string;
}

const jobTimes = (state: JobState) => ({
  started_at: state === 'pending' ? null : new Date(),
  completed_at: state === 'succeeded' || state === 'failed' || state === 'canceled' ? new Date() : null,
  canceled_at: state === 'canceled' ? new Date() : null,
});

/** Adds the next build (and its provisioner job) to a workspace; returns ids. */
export async function addBuild(sql: Sql, workspaceId: string, spec: BuildSpec): Promise<{ buildId: string; jobId: string; buildNumber: number }> {
  const buildId = randomUUID();
  const jobId = randomUUID();
  const state = spec.state ?? 'succeeded';
  const input =
    spec.input !== undefined
      ? spec.input
      : { workspace_build_id: buildId, dry_run: false, ...(spec.stage ? { prebuilt_workspace_stage: spec.stage } : {}) };
  const t = jobTimes(state);
  const error = spec.error ?? (state === 'failed' ? 'terraform apply: exit status 1' : null);
  await sql`INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, canceled_at, completed_at, error,
              organization_id, initiator_id, provisioner, storage_method, type, input, file_id)
            VALUES (${jobId}, now(), now(), ${t.started_at}, ${t.canceled_at}, ${t.completed_at}, ${error},
              ${ORG}, ${spec.initiator}, 'terraform', 'file', 'workspace_build', ${sql.json(input as postgres.JSONValue)}, ${FILE})`;
  const [row] = await sql<{ n: number }[]>`
    INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
    VALUES (${buildId}, now(), now(), ${workspaceId}, ${TEMPLATE_VERSION},
            (SELECT coalesce(max(build_number), 0) + 1 FROM workspace_builds WHERE workspace_id = ${workspaceId}),
            ${spec.transition ?? 'start'}, ${spec.initiator}, ${jobId})
    RETURNING build_number AS n`;
  return { buildId, jobId, buildNumber: (row as { n: number }).n };
}

/** Adds an agent to a build's job and returns its auth token. */
export async function addAgent(sql: Sql, jobId: string): Promise<string> {
  const resourceId = randomUUID();
  const token = randomUUID();
  await sql`INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
            VALUES (${resourceId}, now(), ${jobId}, 'start', 'docker_container', 'main')`;
  await sql`INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token, architecture, operating_system)
            VALUES (${randomUUID()}, now(), now(), 'main', ${resourceId}, ${token}, 'amd64', 'linux')`;
  return token;
}

/** Marks a job finished (or failed). */
export async function finishJob(sql: Sql, jobId: string, error: string | null = null): Promise<void> {
  await sql`UPDATE provisioner_jobs SET completed_at = now(), started_at = coalesce(started_at, now()), error = ${error}, updated_at = now() WHERE id = ${jobId}`;
}

/**
 * Publishes the claim event as provisionerdserver does when a claim build completes,
 * through PostgreSQL NOTIFY (coderd's pubsub) on `prebuild_claimed_<workspace id>`.
 */
export async function publishClaim(sql: Sql, workspaceId: string): Promise<void> {
  await sql.notify(`prebuild_claimed_${workspaceId}`, JSON.stringify({ workspace_id: workspaceId, reason: 'prebuild_claimed' }));
}

/** The situations a workspace can be in, named for the story they tell. */
export type Scenario =
  | 'long_claimed' // claimed long ago, restarted since: the bug's victims
  | 'latest_stop' // claimed, then stopped: latest build is a stop
  | 'claim_failed_retried' // claim build failed, the user started again
  | 'just_claimed' // the claim build is the latest and succeeded
  | 'claim_failed' // the claim build is the latest and failed
  | 'claim_running' // the claim build is the latest and still running
  | 'regular' // never a prebuild
  | 'unclaimed_prebuild'; // still owned by the prebuilds user

/** A seeded workspace with its agent. */
export interface Seeded {
  scenario: Scenario;
  workspaceId: string;
  ownerId: string;
  token: string;
  /** The job of the latest build. */
  latestJobId: string;
}

/** Seeds one workspace in the given scenario. */
export async function seedScenario(sql: Sql, scenario: Scenario, userId: string, name: string = `${scenario}-${randomUUID().slice(0, 8)}`): Promise<Seeded> {
  const P = PREBUILDS_USER_ID;
  const owner = scenario === 'unclaimed_prebuild' ? P : userId;
  const ws = await createWorkspace(sql, owner, name);
  const builds: BuildSpec[] =
    scenario === 'regular' ? [{ initiator: userId }]
    : scenario === 'unclaimed_prebuild' ? [{ initiator: P, stage: STAGE.CREATE }]
    : [
        { initiator: P, stage: STAGE.CREATE },
        {
          initiator: userId,
          stage: STAGE.CLAIM,
          state: scenario === 'claim_failed' || scenario === 'claim_failed_retried' ? 'failed' : scenario === 'claim_running' ? 'running' : 'succeeded',
        },
        ...(scenario === 'long_claimed' ? [{ initiator: userId, transition: 'stop' as const }, { initiator: userId }] : []),
        ...(scenario === 'latest_stop' ? [{ initiator: userId, transition: 'stop' as const }] : []),
        ...(scenario === 'claim_failed_retried' ? [{ initiator: userId }] : []),
      ];
  let last = { jobId: '' };
  let agentJob = '';
  for (const b of builds) {
    last = await addBuild(sql, ws, b);
    if ((b.transition ?? 'start') === 'start') agentJob = last.jobId;
  }
  const token = await addAgent(sql, agentJob);
  return { scenario, workspaceId: ws, ownerId: owner, token, latestJobId: last.jobId };
}

/** Workspaces seeded in bulk, by what the unpatched coderd and the guard make of them. */
export type BulkKind =
  | 'long_claimed' // prebuild, claim, stop, start: the bug's victims (409 through the guard)
  | 'just_claimed' // prebuild, claim: the claim build is the latest (the event is genuine)
  | 'held'; // owner changed, only the prebuild's own build: the claim build does not exist yet (held)

/**
 * Seeds `n` long-claimed workspaces (prebuild, claim, stop, start) in a few set-based
 * statements, for storms; returns their agent tokens and workspace ids.
 */
export const seedLongClaimedBulk = (sql: Sql, userId: string, n: number, prefix = 'storm') => seedBulk(sql, userId, n, 'long_claimed', prefix);

/**
 * Seeds `n` workspaces of one kind in a few set-based statements (storms need thousands);
 * the agent belongs to the latest start build. Returns agent tokens and workspace ids.
 */
export async function seedBulk(sql: Sql, userId: string, n: number, kind: BulkKind, prefix: string = kind): Promise<Array<{ token: string; workspaceId: string }>> {
  const P = PREBUILDS_USER_ID;
  const builds = kind === 'long_claimed' ? 4 : kind === 'just_claimed' ? 2 : 1;
  return sql.begin(async (tx) => {
    await tx`CREATE TEMP TABLE seed ON COMMIT DROP AS
      SELECT g AS i, gen_random_uuid() AS ws, gen_random_uuid() AS token, gen_random_uuid() AS res,
             ARRAY[gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid()] AS jobs
      FROM generate_series(1, ${n}) g`;
    await tx`INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id, name)
      SELECT ws, now(), now(), ${userId}, ${ORG}, ${TEMPLATE}, ${prefix} || '-' || i FROM seed`;
    await tx`INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id, provisioner, storage_method, type, input, file_id)
      SELECT jobs[b], now(), now(), now(), now(), ${ORG}, CASE WHEN b = 1 THEN ${P}::uuid ELSE ${userId}::uuid END, 'terraform', 'file', 'workspace_build',
             CASE b WHEN 1 THEN '{"prebuilt_workspace_stage":1}'::jsonb WHEN 2 THEN '{"prebuilt_workspace_stage":2}'::jsonb ELSE '{}'::jsonb END, ${FILE}
      FROM seed, generate_series(1, ${builds}) b`;
    await tx`INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
      SELECT gen_random_uuid(), now(), now(), ws, ${TEMPLATE_VERSION}, b, (CASE WHEN b = 3 THEN 'stop' ELSE 'start' END)::workspace_transition,
             CASE WHEN b = 1 THEN ${P}::uuid ELSE ${userId}::uuid END, jobs[b]
      FROM seed, generate_series(1, ${builds}) b`;
    await tx`INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name) SELECT res, now(), jobs[${builds}], 'start', 'docker_container', 'main' FROM seed`;
    await tx`INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token, architecture, operating_system)
      SELECT gen_random_uuid(), now(), now(), 'main', res, token, 'amd64', 'linux' FROM seed`;
    return tx<Array<{ token: string; workspaceId: string }>>`SELECT token::text AS token, ws::text AS "workspaceId" FROM seed ORDER BY i`;
  }) as Promise<Array<{ token: string; workspaceId: string }>>;
}
