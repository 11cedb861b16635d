import { CODER_PG_URL_ENV, describeDatabase, loadConfig } from '../config/index.js';
import { DEFAULT_RETIRE_AT } from '../config/options.js';
import { createDbClient } from '../db/client.js';
import { fetchCoderdVersion, versionRetires } from '../lifecycle/retirement.js';
import { upstreamFrom } from '../proxy/upstream.js';
import { createAuditQueries, type AffectedRow, type AuditCounts } from './queries.js';

/** Exit statuses of `audit`, so it can gate a rollout. */
export const AUDIT_EXIT = { NONE_AFFECTED: 0, SOME_AFFECTED: 1, FAILED: 2 } as const;

/**
 * coderd releases that shipped the durable claim check without the fix (PR #23108 ..
 * #26548). Read from the releases' own sources (the module proxy serves some): v2.34.3, the
 * newest 2.34 it serves, seeds on every reconnect; v2.35.1 carries the fix.
 */
export const AFFECTED_RANGE = '>=2.33.0 <=2.34.3';
/** The first release verified to carry the fix: the default REINIT_GUARD_RETIRE_AT starts there. */
export const FIRST_FIXED = DEFAULT_RETIRE_AT.replace('>=', '');
/**
 * Releases between the two that could not be read here: a 2.34.x after 2.34.3 may carry the
 * 2.34 backport (#26644), and 2.35.0 may or may not. Their release notes say.
 */
export const UNVERIFIED_RANGE = `>2.34.3 <${FIRST_FIXED}`;

/** The whole report, as `--json` prints it. */
export interface AuditReport {
  coderd: { version: string | null; affected: boolean | null; note: string };
  counts: AuditCounts;
  affected: AffectedRow[];
  limit: number;
}

const USAGE = `usage: coder-reinit-guard audit [--limit N] [--json]

Read-only report of the workspaces the prebuild reinit bug hits. Uses the guard's
configuration: REINIT_GUARD_PG_URL (or ${CODER_PG_URL_ENV}, or PGHOST with PGPORT,
PGDATABASE, PGUSER, PGPASSWORD and PGSSLMODE), and optionally REINIT_GUARD_UPSTREAM (to read
coderd's version) and REINIT_GUARD_RETIRE_AT (the fixed range).
Exit status: 0 nothing affected, 1 some workspaces affected, 2 the audit could not run.
`;

/** What a failure means for the operator: which grant is missing, what is unreachable. */
function explain(err: unknown): string {
  const e = err as { code?: string; message?: string; address?: string; port?: number };
  const msg = e?.message ?? String(err);
  const denied = /permission denied for (?:table|relation) (\w+)/.exec(msg);
  if (e?.code === '42501' && denied) {
    return `the database role may not read ${denied[1]}: apply sql/audit-grants.sql (with sql/least-privilege-role.sql) to it (${msg})`;
  }
  if (e?.code === '42501') return `the database role lacks a privilege: apply sql/audit-grants.sql (${msg})`;
  if (/ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|CONNECT_TIMEOUT|EHOSTUNREACH/.test(e?.code ?? msg)) {
    return `cannot reach PostgreSQL (${e?.code ?? 'unreachable'}${e?.address ? ` at ${e.address}:${e.port}` : ''})`;
  }
  if (e?.code === '28P01' || e?.code === '28000') return `PostgreSQL refused the credentials (${e.code})`;
  if (e?.code === '3D000') return `the database does not exist (${msg})`;
  return msg;
}

/** Renders the human report. */
export function formatReport(r: AuditReport): string {
  const c = r.counts;
  const lines = [
    `coderd: ${r.coderd.version ?? 'version unknown'} (${r.coderd.note})`,
    '',
    `workspaces (not deleted):                  ${c.workspaces}`,
    `claimed from a prebuild:                   ${c.claimed}`,
    `  affected (latest build is not the claim): ${c.affected}`,
    `  claim build is the latest, succeeded:    ${c.claimBuildLatest}`,
    `  claim build is the latest, failed:       ${c.claimFailed}`,
    `  claim build is the latest, in progress:  ${c.claimInProgress}`,
    `unclaimed prebuilds:                       ${c.unclaimedPrebuilds}`,
  ];
  if (r.affected.length) {
    const rows = r.affected.map((a) => [a.workspace_id, a.owner_username, a.workspace_name, `#${a.latest_build_number} ${a.latest_transition} (${a.latest_job_status})`, a.claimed_at ? a.claimed_at.toISOString() : '-']);
    const head = ['workspace id', 'owner', 'workspace', 'latest build', 'claimed at'];
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i]!.length)));
    const fmt = (cells: string[]) => cells.map((x, i) => x.padEnd(w[i]!)).join('  ').trimEnd();
    lines.push('', `affected workspaces${c.affected > r.affected.length ? ` (first ${r.affected.length} of ${c.affected}; --limit to see more)` : ''}:`, fmt(head), fmt(w.map((n) => '-'.repeat(n))), ...rows.map(fmt));
  }
  lines.push(
    '',
    c.affected
      ? `${c.affected} workspace(s) get a spurious prebuild_claimed reinit on every agent reconnect while coderd is unpatched.`
      : 'No workspace is affected.',
  );
  return `${lines.join('\n')}\n`;
}

/**
 * Runs `audit`: read-only, one-shot, same configuration as the guard. Returns the exit
 * status; writes the report to `out` and problems to `err`.
 */
export async function runAudit(argv: string[], env: Record<string, string | undefined>, io: { out: (s: string) => void; err: (s: string) => void }): Promise<number> {
  let limit = 50;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--limit' || a.startsWith('--limit=')) {
      const v = a.includes('=') ? a.slice(8) : argv[++i];
      if (!v || !/^\d+$/.test(v)) {
        io.err(`audit: --limit ${JSON.stringify(v ?? '')} is not valid: use a whole number\n${USAGE}`);
        return AUDIT_EXIT.FAILED;
      }
      limit = Number(v);
    } else if (a === '--help' || a === '-h') {
      io.out(USAGE);
      return AUDIT_EXIT.NONE_AFFECTED;
    } else {
      io.err(`audit: unknown argument ${JSON.stringify(a)}\n${USAGE}`);
      return AUDIT_EXIT.FAILED;
    }
  }

  const cfg = loadConfig(env, { upstreamRequired: false });
  if (!cfg.ok) {
    io.err(`audit: invalid configuration:\n${cfg.problems.map((p) => `  - ${p}`).join('\n')}\n`);
    return AUDIT_EXIT.FAILED;
  }
  const config = cfg.config;
  if (!config.pgUrl && !config.pgParams) {
    io.err(`audit: REINIT_GUARD_PG_URL is not set: set either it (or ${CODER_PG_URL_ENV}) to coderd's PostgreSQL URL, or PGHOST (with PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PGSSLMODE as needed)\n`);
    return AUDIT_EXIT.FAILED;
  }

  const coderd: AuditReport['coderd'] = { version: null, affected: null, note: 'REINIT_GUARD_UPSTREAM not set: version not checked' };
  if (config.upstream) {
    const upstream = upstreamFrom(config);
    coderd.version = await fetchCoderdVersion(upstream);
    upstream.agent.destroy();
    upstream.controlAgent.destroy();
    void upstream.pool.destroy();
    // An operator who set a range of their own has read the release notes of the releases
    // between; the default says nothing about them.
    const widened = config.retireAt !== undefined && config.retireAt !== DEFAULT_RETIRE_AT;
    if (coderd.version === null) coderd.note = `could not read ${config.upstream.origin}/api/v2/buildinfo`;
    else if (config.retireAt && versionRetires(coderd.version, config.retireAt)) {
      coderd.affected = false;
      coderd.note = `in REINIT_GUARD_RETIRE_AT ${config.retireAt}: carries the fix`;
    } else if (versionRetires(coderd.version, AFFECTED_RANGE) || (widened && versionRetires(coderd.version, UNVERIFIED_RANGE))) {
      coderd.affected = true;
      coderd.note = widened
        ? `affected: a release the bug shipped in, below the fix (${config.retireAt})`
        : `affected: a release the bug shipped in (${AFFECTED_RANGE}); the fix is in ${FIRST_FIXED}`;
    } else if (versionRetires(coderd.version, UNVERIFIED_RANGE)) {
      coderd.affected = null;
      coderd.note = `between the last release known to have the bug (2.34.3) and the first known to be fixed (${FIRST_FIXED}): check its release notes for coder#26644 and set REINIT_GUARD_RETIRE_AT`;
    } else {
      coderd.affected = false;
      coderd.note = `outside ${AFFECTED_RANGE}: not a release the bug shipped in`;
    }
  }

  const sql = createDbClient({ url: config.pgUrl, params: config.pgParams, poolSize: 1, statementTimeoutMs: 60_000, connectTimeoutMs: config.dbConnectTimeoutMs });
  try {
    const q = createAuditQueries(sql);
    const counts = await q.counts();
    const affected = limit > 0 ? await q.affected(limit) : [];
    const report: AuditReport = { coderd, counts, affected, limit };
    io.out(json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    return counts.affected > 0 ? AUDIT_EXIT.SOME_AFFECTED : AUDIT_EXIT.NONE_AFFECTED;
  } catch (err) {
    io.err(`audit: ${explain(err)} [database ${describeDatabase(config)}]\n`);
    return AUDIT_EXIT.FAILED;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}
