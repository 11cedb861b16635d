/**
 * `npm run bench:audit`: the audit on 50,000 workspaces with 10 builds each (500,000 builds
 * and jobs) on an embedded PostgreSQL; prints seeding time and three timed audit runs.
 * The bar: one run within 5 s on the bench machine. Not a test: figures vary by machine.
 */
import postgres from 'postgres';
import { runAudit, type AuditReport } from '../src/audit/index.js';
import { PREBUILDS_USER_ID } from '../src/reinit/verdict.js';
import { createUser } from '../testkit/fixtures.js';
import { startEmbeddedPg } from '../testkit/pg.js';

const WORKSPACES = Number(process.env.AUDIT_WORKSPACES ?? 50_000);
const BUILDS = 10;

async function main() {
  const pg = await startEmbeddedPg({ withSchemaTemplate: true });
  const url = await pg.createDatabase('audit_bench');
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const user = await createUser(sql, 'bench');
  const t0 = performance.now();
  // Workspace i: every 20th still an unclaimed prebuild; every 10th has its claim build
  // as build #10 (legitimately the latest); the rest were claimed at #2 and rebuilt since.
  await sql`INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id, name)
    SELECT md5('ws' || i)::uuid, now(), now(), CASE WHEN i % 20 = 1 THEN ${PREBUILDS_USER_ID}::uuid ELSE ${user}::uuid END,
           gen_random_uuid(), gen_random_uuid(), 'ws-' || i
    FROM generate_series(1, ${WORKSPACES}) i`;
  await sql`INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id, provisioner, storage_method, type, input, file_id)
    SELECT md5('job' || i || '-' || b)::uuid, now(), now(), now(), now(), gen_random_uuid(), ${user}::uuid, 'terraform', 'file', 'workspace_build',
           CASE WHEN b = 1 THEN '{"prebuilt_workspace_stage":1}'::jsonb
                WHEN i % 20 = 1 THEN '{}'::jsonb
                WHEN (i % 10 = 0 AND b = ${BUILDS}) OR (i % 10 <> 0 AND b = 2) THEN '{"prebuilt_workspace_stage":2}'::jsonb
                ELSE '{}'::jsonb END,
           gen_random_uuid()
    FROM generate_series(1, ${WORKSPACES}) i, generate_series(1, ${BUILDS}) b`;
  await sql`INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
    SELECT gen_random_uuid(), now() - ((${BUILDS} - b) || ' days')::interval, now(), md5('ws' || i)::uuid, gen_random_uuid(), b,
           (CASE WHEN b % 2 = 1 AND b > 2 THEN 'stop' ELSE 'start' END)::workspace_transition,
           CASE WHEN b = 1 OR i % 20 = 1 THEN ${PREBUILDS_USER_ID}::uuid ELSE ${user}::uuid END,
           md5('job' || i || '-' || b)::uuid
    FROM generate_series(1, ${WORKSPACES}) i, generate_series(1, ${BUILDS}) b`;
  await sql`ANALYZE`;
  const seeded = (performance.now() - t0) / 1000;
  process.stdout.write(`seeded ${WORKSPACES} workspaces x ${BUILDS} builds in ${seeded.toFixed(1)} s\n`);
  for (let run = 1; run <= 3; run++) {
    let out = '';
    const t = performance.now();
    const code = await runAudit(['--json'], { REINIT_GUARD_PG_URL: url }, { out: (s) => (out += s), err: (s) => process.stderr.write(s) });
    const secs = (performance.now() - t) / 1000;
    const r = JSON.parse(out) as AuditReport;
    process.stdout.write(`run ${run}: ${secs.toFixed(2)} s, exit ${code}, counts ${JSON.stringify(r.counts)}\n`);
  }
  await sql.end();
  await pg.stop();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`audit bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
