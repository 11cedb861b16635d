/**
 * Compares what the real agent SDK saw in three columns: the patched coderd (the oracle),
 * the unpatched coderd straight, and the guard in front of the unpatched coderd. Every row
 * is listed in ROWS with what the guard must do there; a row that is missing (in any
 * column), or one that is not listed, fails the run, as a difference does.
 *
 * What is compared, after writing ids as <workspace>, <owner> and <uuid>: the agent SDK's
 * result; on the raw socket the status, every header (name, value, order; Date's value, the
 * CSRF cookie's random value and coderd's version string normalised), the framing and the
 * body; an agent loop's counts. Differences the guard is known to have on the wire are
 * named in KNOWN_DEVIATIONS and reported on every row they touch.
 */

export interface ReinitEvent {
  workspace_id: string;
  reason: string;
  owner_id?: string;
}
export interface SdkResult {
  outcome: 'event' | 'http' | 'wait' | 'error';
  event?: ReinitEvent;
  status?: number;
  message?: string;
  detail?: string;
  error?: string;
  at_ms: number;
}
export interface RawResult {
  query: string;
  outcome: 'event' | 'http' | 'wait' | 'ended' | 'error';
  status?: number;
  headers?: [string, string][];
  framing?: string;
  body: string;
  first_byte_ms: number;
  head_ms: number;
  end_ms?: number;
  reads?: { at_ms: number; bytes: string }[];
  error?: string;
}
export interface LoopResult {
  requests: number;
  reinits: number;
  skipped: number;
  closed: string;
  first_event_ms: number;
  first_event?: ReinitEvent;
  seconds: number;
  answers?: Record<string, number>;
}
export interface GuardFacts {
  metrics: Record<string, number>;
  log: string[];
  errors?: string[];
}
export interface Observation {
  scenario: string;
  column: string;
  step: string;
  workspace: string;
  owner: string;
  latest_build: string;
  sdk?: SdkResult;
  raw?: RawResult;
  loop?: LoopResult;
  guard_saw?: number;
  marks?: Record<string, number>;
  guard?: GuardFacts;
}
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}
export interface Results {
  side: 'patched' | 'unpatched';
  coder_version: string;
  buildinfo_version: string;
  observations: Observation[];
  checks: Check[];
  seconds: Record<string, number>;
}

/** The three columns of every row. */
export const COLUMNS = ['patched', 'unpatched', 'guard'] as const;

/** A check on one observation: null when it holds, else what is wrong. */
type ObsCheck = (o: Observation, cols: { patched: Observation; unpatched: Observation }) => string | null;

/** What the guard must do in one row. */
export interface RowSpec {
  /**
   * The guard must equal the unpatched column here, not the oracle, for the reason given
   * (it cannot decide; or it relays coderd's answer). Without it, the guard must equal the
   * oracle.
   */
  equalsUnpatched?: string;
  /**
   * A row no column pins (the guard gives the agent an equivalent outcome by other means):
   * what it requires, and the check. Replaces the comparison with a column.
   */
  custom?: { requires: string; check: ObsCheck };
  /** The unpatched coderd must deliver a seeded `prebuild_claimed` here (the bug). */
  bug?: boolean;
  /** Further requirements on the guard column: its own log and metrics. */
  facts?: { requires: string; check: ObsCheck };
}

const PREBUILDS_USER = 'c42fdf75-3097-471c-8c33-fb52454d81c0';
const NOTHING_COUNTED: RowSpec['facts'] = { requires: 'it counted and logged nothing about /reinit', check: (g) => need(g, []) ?? nothingCounted(g) };
const COUNTED_SUPPRESSED: RowSpec['facts'] = {
  requires: 'it counted the 409 it answered (suppressed)',
  check: (g) => need(g, [['reinit_requests_total', { outcome: 'suppressed', reason: 'claim_already_handled' }, '>=1']]),
};
const COUNTED_PASSED: RowSpec['facts'] = {
  requires: 'it counted the genuine claim as passed',
  check: (g) => need(g, [['reinit_requests_total', { outcome: 'passed', reason: 'claim_build_is_latest' }, '>=1']]),
};
const HOLD = 'hold: owner changed, claim build not created yet';
const HOLD_STEP_AFTER = 'stream opened before the claim build; claim build created and completed';

/**
 * Why a guard column cannot match the oracle while coderd is unfinished: a running build's
 * agent (the one before a stop or delete build) is authenticated, the unpatched coderd
 * waits on pubsub and writes nothing (not even its head) until its first ping 15 s later,
 * exactly as it writes nothing before a 401 it is about to send from another path. The
 * guard sees no event and no head, so it cannot tell "authenticated and waiting" from
 * "about to fail": it must pass the silence through. (Matching the oracle would not need
 * SELECT on agent tokens: a SECURITY DEFINER lookup function could name the workspace. It
 * would need the guard to answer before coderd has said anything.)
 */
const UNFINISHED_BUILD =
  'the unpatched coderd writes nothing here until its first ping (15 s), so the guard cannot tell an agent that is ' +
  'authenticated and waiting from one that is about to get a 401; it must pass the silence through unchanged. ' +
  'No reinit either way; once the build completes, a reconnect is answered with the 409';

/** Every row, by "scenario / step", with what the guard must do there. */
export const ROWS: Record<string, RowSpec> = {
  'never a prebuild / agent connects': {},
  'claim arrives by pubsub / unclaimed prebuild: agent waits': {},
  'claim arrives by pubsub / claimed meanwhile: the waiting stream': {},
  'claim build is the latest, succeeded / agent (re)connects': {},
  'claim build in progress, then completing / agent reconnects while the claim build runs': {},
  'claim build in progress, then completing / stream opened before the claim, after the build completed': {},
  'claim build failed / agent (re)connects': {},
  'claim failed, owner retried with a start / agent (re)connects': { bug: true },
  'long claimed: user start after the claim / wait absent': {},
  'long claimed: user start after the claim / wait=false': {},
  'long claimed: user start after the claim / wait=1': { bug: true },
  'long claimed: user start after the claim / wait=true (the agent)': { bug: true },
  'long claimed: latest build is a stop / agent (re)connects': { bug: true },
  'long claimed: user stop in progress / agent reconnects while the stop build runs': { equalsUnpatched: UNFINISHED_BUILD },
  [`${HOLD} / agent connects before the claim build exists`]: { bug: true },
  [`${HOLD} / ${HOLD_STEP_AFTER}`]: {
    custom: {
      requires:
        'the unpatched coderd dropped its pubsub subscription when it seeded, so this stream can never carry the claim: ' +
        'the guard must end it cleanly (coderd\'s head, no byte of body, the last chunk) once the claim build exists, ' +
        'within 5 s, so the agent reconnects; the next row shows the agent then gets its claim once, after the build',
      check: (g, { patched }) => heldStreamEnded(g, patched),
    },
  },
  [`${HOLD} / the agent's reinit loop over the same time`]: { bug: true },
  'agent loop against a long-claimed workspace / the agent loop over the window': {
    bug: true,
    facts: { requires: 'the guard of its own counted exactly the loop\'s requests', check: (g) => (g.guard_saw === g.loop?.requests ? null : `the guard counted ${g.guard_saw}, the loop sent ${g.loop?.requests}`) },
  },
  'idle stream on the wire / unclaimed prebuild, watched past the first ping': {},
  ...dbFaultRows('database down', "agent reconnects while the guard's database is down", 'agent reconnects after the database is back', 'unavailable', true),
  ...dbFaultRows(
    'database slow past the deadline',
    "agent reconnects while the guard's database answers after its deadline",
    'agent reconnects after the database is fast again',
    'timeout',
    true,
  ),
  ...dbFaultRows("the guard's grant revoked", "agent reconnects while the guard's SELECT on provisioner_jobs is revoked", 'agent reconnects after the grant is restored', 'privilege', false),
  'claim build failed permanently (error set on the completed claim job) / agent (re)connects': {},
  'two agents: claim build is the latest / agent main (re)connects': {},
  'two agents: claim build is the latest / agent agentb (re)connects': {},
  'two agents: long claimed / agent main (re)connects': { bug: true },
  'two agents: long claimed / agent agentb (re)connects': { bug: true },
  'two agents: hold / agent main connects before the claim build exists': { bug: true },
  'two agents: hold / agent agentb connects before the claim build exists': { bug: true },
  "two agents: hold / agent main's reinit loop while the claim build is created and runs": { bug: true },
  "two agents: hold / agent agentb's reinit loop while the claim build is created and runs": { bug: true },
  'workspace deleted / agent (re)connects': {},
  // Unlike a stop, a running delete build leaves no agent coderd authenticates: 401 everywhere.
  'delete build running / agent reconnects while the delete build runs': {},
  'template version update after a claim / agent (re)connects after the update': { bug: true },
  'autostop after a claim / agent (re)connects after the autostop build': { bug: true },
  'autostart after a claim / agent (re)connects after the autostart build': { bug: true },
  // coderd cannot name a dormant workspace from its agent's token (500 in both releases): no bug to show.
  'dormancy after a claim / agent (re)connects after the dormancy build': {},
  'claim build cancelled / agent (re)connects': {},
  'start failed after a claim / agent (re)connects': {},
  'stop failed after a claim / agent (re)connects': {},
  'legacy job input: long claimed / agent (re)connects': { bug: true },
  'legacy job input: claim build by the prebuilds user / agent (re)connects': { bug: true },
  'a claim in a non-default organization: claim build is the latest / agent (re)connects': {},
  'a claim in a non-default organization: long claimed / agent (re)connects': { bug: true },
  ...frontOfPatchedRows(true),
  ...frontOfPatchedRows(false),
  'mode observe: long claimed / agent (re)connects': {
    equalsUnpatched: 'observe never changes a byte',
    bug: true,
    facts: { requires: 'it counted what it would do: would_suppress, nothing suppressed', check: (g) => need(g, [['reinit_requests_total', { outcome: 'would_suppress' }, '>=1'], ['reinit_requests_total', { outcome: 'suppressed' }, '=0']]) },
  },
  'mode observe: claim build is the latest / agent (re)connects': {
    equalsUnpatched: 'observe never changes a byte',
    facts: { requires: 'it counted the genuine claim as passed', check: (g) => need(g, [['reinit_requests_total', { outcome: 'passed', reason: 'claim_build_is_latest' }, '>=1']]) },
  },
  'mode off: long claimed / agent (re)connects': { equalsUnpatched: 'off never looks at /reinit', bug: true, facts: NOTHING_COUNTED },
  'mode off: claim build is the latest / agent (re)connects': { equalsUnpatched: 'off never looks at /reinit', facts: NOTHING_COUNTED },
  'REINIT_GUARD_WORKERS=2: long claimed / agent (re)connects': { bug: true, facts: COUNTED_SUPPRESSED },
  'REINIT_GUARD_WORKERS=2: claim build is the latest / agent (re)connects': { facts: COUNTED_PASSED },
  'TLS upstream: long claimed / agent (re)connects': { bug: true, facts: COUNTED_SUPPRESSED },
  'TLS upstream: claim build is the latest / agent (re)connects': { facts: COUNTED_PASSED },
};

/** The guard's rows while its database fails, and after it is back. */
function dbFaultRows(scenario: string, during: string, after: string, failure: string, probeSees: boolean): Record<string, RowSpec> {
  return {
    [`${scenario} / ${during}`]: {
      equalsUnpatched: 'the guard cannot decide without its database: it must fail open, passing coderd\'s stream unchanged',
      bug: true,
      facts: {
        requires: `it says so: failed_open (db_${failure}) and db_errors (${failure}) counted, "reinit decision failed open" logged with reason db_${failure}${probeSees ? ', the database dependency down' : ''}`,
        check: (g) =>
          need(g, [
            ['reinit_requests_total', { outcome: 'failed_open', reason: `db_${failure}` }, '>=1'],
            ['reinit_requests_total', { outcome: 'suppressed' }, '=0'],
            ['db_errors_total', { kind: failure }, '>=1'],
            ...(probeSees ? ([['dependency_up', { dependency: 'database' }, '=0']] as Need[]) : []),
          ]) ?? logNeed(g, 'reinit decision failed open', { reason: `db_${failure}`, workspace_id: g.workspace }) ?? (probeSees ? logNeed(g, 'dependency down', { dependency: 'database' }) : null),
      },
    },
    [`${scenario} / ${after}`]: {
      bug: true,
      facts: {
        requires: 'it decides again: suppressed counted, "reinit decision" logged with outcome suppressed, the database dependency up',
        check: (g) =>
          need(g, [
            ['reinit_requests_total', { outcome: 'suppressed', reason: 'claim_already_handled' }, '>=1'],
            ['dependency_up', { dependency: 'database' }, '=1'],
          ]) ?? logNeed(g, 'reinit decision', { outcome: 'suppressed', workspace_id: g.workspace }),
      },
    },
  };
}

/** The guard in front of the patched coderd (a guard of its own, on the patched side). */
function frontOfPatchedRows(retired: boolean): Record<string, RowSpec> {
  const prefix = `in front of the patched coderd, ${retired ? 'retired' : 'not retired'}: `;
  const facts = (more: Need[], requires: string): RowSpec['facts'] => ({
    requires: retired ? `it retired (coder_reinit_guard_retired 1) and never looked at /reinit: ${requires}` : `it did not retire (coder_reinit_guard_retired 0): ${requires}`,
    check: (g) => need(g, [['retired', {}, retired ? '=1' : '=0'], ...more]) ?? (retired ? nothingCounted(g) : null),
  });
  return {
    [`${prefix}long claimed / agent (re)connects`]: {
      bug: true,
      facts: facts(retired ? [] : [['reinit_requests_total', { outcome: 'upstream_status', reason: '409' }, '>=1']], retired ? 'a pure pass-through' : "coderd's own 409 relayed"),
    },
    [`${prefix}claim build is the latest / agent (re)connects`]: {
      facts: facts(retired ? [] : [['reinit_requests_total', { outcome: 'passed', reason: 'claim_build_is_latest' }, '>=1']], retired ? 'a pure pass-through' : 'the genuine claim passed'),
    },
    [`${prefix}hold / agent connects before the claim build exists`]: {
      bug: true,
      facts: retired
        ? facts([], 'a pure pass-through')
        : {
            requires: 'it did not retire (coder_reinit_guard_retired 0) and decided nothing: coderd said nothing',
            check: (g) => need(g, [['retired', {}, '=0']]) ?? nothingCounted(g),
          },
    },
  };
}

type Need = [metric: string, labels: Record<string, string>, want: '>=1' | '=0' | '=1'];

/** The sum of a guard metric's samples (coder_reinit_guard_<metric>) whose labels include `labels`. */
export function metricOf(o: Observation, metric: string, labels: Record<string, string>): number {
  return samples(o, metric, labels).reduce((a, b) => a + b, 0);
}

const GAUGES = new Set(['retired', 'dependency_up']);
const present = (o: Observation, metric: string, labels: Record<string, string>) => samples(o, metric, labels).length > 0;

function samples(o: Observation, metric: string, labels: Record<string, string>): number[] {
  const facts = o.guard?.metrics ?? {};
  const out: number[] = [];
  for (const [key, value] of Object.entries(facts)) {
    const m = key.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$/);
    if (!m || m[1] !== `coder_reinit_guard_${metric}`) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) out.push(value);
  }
  return out;
}

function need(g: Observation, needs: Need[]): string | null {
  if (!g.guard) return 'no facts from the guard';
  if (g.guard.errors?.length) return `the guard's admin port: ${g.guard.errors.join('; ')}`;
  for (const [metric, labels, want] of needs) {
    const v = metricOf(g, metric, labels);
    // Gauges are always exported: absent means the guard did not say it.
    if (GAUGES.has(metric) && !present(g, metric, labels)) return `coder_reinit_guard_${metric}${JSON.stringify(labels)} is not exported`;
    const ok = want === '>=1' ? v >= 1 : want === '=0' ? v === 0 : v === 1;
    if (!ok) return `coder_reinit_guard_${metric}${JSON.stringify(labels)} is ${v}, not ${want.replace('=', '')}`;
  }
  return null;
}

/** Why the guard's log has no line with this msg and these fields, or null. */
function logNeed(g: Observation, msg: string, fields: Record<string, string>): string | null {
  for (const line of g.guard?.log ?? []) {
    try {
      const e = JSON.parse(line) as Record<string, unknown>;
      if (e.msg === msg && Object.entries(fields).every(([k, v]) => e[k] === v)) return null;
    } catch {
      // not a JSON line
    }
  }
  return `no log line "${msg}" with ${JSON.stringify(fields)}`;
}

/** The guard decided nothing about /reinit (retired, or mode off). */
function nothingCounted(g: Observation): string | null {
  const n = Object.keys(g.guard?.metrics ?? {}).filter((k) => k.startsWith('coder_reinit_guard_reinit_requests_total'));
  const logged = (g.guard?.log ?? []).filter((l) => /"msg":"(reinit|held reinit)/.test(l));
  if (n.length) return `it counted /reinit requests: ${n.join(', ')}`;
  if (logged.length) return `it logged about /reinit: ${logged[0]}`;
  return null;
}

/**
 * Checks with no oracle row; every one must be present exactly once (a missing one fails
 * the run as a failing one does), and a check not listed here fails too. The first number in
 * a name counts agents; it must reach `minAgents` (the acceptance point: at least 200 agents)
 * unless the run was shrunk on purpose with FIDELITY_STORM_WORKSPACES (a development run).
 */
export const REQUIRED_CHECKS: { side: Results['side']; name: RegExp; minAgents?: number }[] = [
  ...(['patched', 'unpatched'] as const).flatMap((side) => [
    { side, name: /^user session through the guard: first user$/ },
    { side, name: /^user session through the guard: login$/ },
    { side, name: /^user session through the guard: list users$/ },
    { side, name: /^pass-through GET \/api\/v2\/buildinfo$/ },
    { side, name: /^pass-through GET \/api\/v2\/users\/me$/ },
    { side, name: /^pass-through GET \/api\/v2\/workspaces$/ },
    { side, name: /^retirement with REINIT_GUARD_RETIRE_AT=>=2\.35\.1$/ },
  ]),
  { side: 'unpatched', name: /^agent RPC through the guard: connect$/ },
  { side: 'unpatched', name: /^agent RPC through the guard: GetManifest$/ },
  { side: 'unpatched', name: /^agent RPC through the guard: UpdateLifecycle$/ },
  { side: 'unpatched', name: /^reconnect storm: (\d+) agents on \d+ workspaces after a guard restart$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart \(guard column\): a new coderd on the same database and address while (\d+) agents run their loops$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart through the guard: (\d+) long-claimed agents on \d+ workspaces, every loop ended by a 409, 0 reinits$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart through the guard: (\d+) agents on \d+ workspaces whose claim build is the latest, each claim delivered once$/, minAgents: 2 },
  { side: 'unpatched', name: /^coderd restart \(unpatched column\): a new coderd on the same database and address while (\d+) agents run their loops$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart straight to the unpatched coderd: (\d+) long-claimed agents on \d+ workspaces, spurious reinits \(the bug\)$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart straight to the unpatched coderd: (\d+) agents on \d+ workspaces whose claim build is the latest, each claim delivered once$/, minAgents: 2 },
];

/**
 * Differences on the wire the guard is known to have, reported as defects (issue 19) and
 * allowed only in exactly this shape: each one rewrites both header lists being compared,
 * and a row passes with it only when that rewrite is the whole difference. Every row that
 * needed one says so.
 */
export const KNOWN_DEVIATIONS: Record<string, { text: string; applies: (guard: string[][]) => boolean; rewrite: (h: string[][]) => string[][] }> = {
  'connection headers': {
    text:
      'the guard drops coderd\'s "Connection: keep-alive" from its place in coderd\'s sorted head and its HTTP server ' +
      'appends "Connection: keep-alive" and "Keep-Alive: timeout=65" at the end (hop-by-hop headers of its own ' +
      'connection with the agent, RFC 9110 7.6.1)',
    applies: (g) => g.some(([n]) => /^(connection|keep-alive)$/i.test(n ?? '')),
    rewrite: (h) => h.filter(([n]) => !/^(connection|keep-alive)$/i.test(n ?? '')),
  },
  "the guard's own 409": {
    text:
      "the guard's 409 (claim already handled) carries X-Coder-Reinit-Guard: claim-already-handled (documented), " +
      "in its sorted place in a head otherwise ordered as coderd's (sorted names, then Date, then Content-Length)",
    applies: (g) => g.some(([n, v]) => n?.toLowerCase() === 'x-coder-reinit-guard' && v === 'claim-already-handled'),
    rewrite: (h) => h.filter(([n]) => n?.toLowerCase() !== 'x-coder-reinit-guard'),
  },
};

function normalizer(o: Observation): (s: string) => string {
  return (s) =>
    s
      .replaceAll(o.workspace, '<workspace>')
      .replaceAll(o.owner, '<owner>')
      .replaceAll(PREBUILDS_USER, '<prebuilds>')
      .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, '<uuid>');
}

const header = (r: RawResult, name: string) => r.headers?.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1];
const json = (s: string) => JSON.stringify(s);

/**
 * The head as compared: every header in order, with the values that differ on every
 * request (Date, the CSRF cookie, the request id: a uuid) or by coderd release (its version
 * string) normalised.
 */
function normalHeaders(o: Observation, r: RawResult): string[][] {
  const n = normalizer(o);
  return (r.headers ?? []).map(([name, value]) => {
    const l = name.toLowerCase();
    let v = value;
    if (l === 'date' && !Number.isNaN(Date.parse(v))) v = '<date>';
    else if (l === 'x-coder-build-version' && /^v\d+\.\d+\.\d+\+[0-9a-f]{7}$/.test(v)) v = '<coderd version>';
    else if (l === 'set-cookie') v = v.replace(/^csrf_token=[A-Za-z0-9+/=]+;/, 'csrf_token=<random>;');
    return [name, n(v)];
  });
}

/** What must be equal between columns (key), under a set of known deviations, and how it is shown. */
function describe(o: Observation, deviations: readonly string[] = []): { key: string; text: string; notes: string[] } {
  const n = normalizer(o);
  const parts: string[] = [];
  const keys: string[] = [];
  const notes: string[] = [];
  if (o.sdk) {
    const s = o.sdk;
    let t: string;
    if (s.outcome === 'event' && s.event) {
      t = n(`event ${s.event.reason} workspace=${s.event.workspace_id} owner=${s.event.owner_id ?? '(none)'}`);
      const done = o.marks?.claim_build_completed_ms;
      if (done !== undefined) t += s.at_ms >= done ? ' (after the claim build completed)' : ' (BEFORE the claim build completed)';
    } else if (s.outcome === 'http') {
      t = n(`HTTP ${s.status}: ${s.message} / ${s.detail}`);
    } else if (s.outcome === 'wait') {
      t = 'waits';
    } else {
      t = n(`error: ${s.error ?? ''}`);
    }
    parts.push(`SDK ${t}`);
    keys.push(`sdk:${t}`);
  }
  if (o.raw) {
    const r = o.raw;
    let headers = normalHeaders(o, r);
    for (const d of deviations) headers = KNOWN_DEVIATIONS[d]!.rewrite(headers);
    const head = `${r.framing ?? '-'} [${headers.map(([k, v]) => `${k}: ${v}`).join(' | ')}]`;
    let t: string;
    let key: string | undefined;
    if (r.outcome === 'http') {
      t = n(`${r.status} ${header(r, 'content-type') ?? '(no content-type)'} ${json(r.body)}`);
    } else if (r.outcome === 'event') {
      // coderd pings every 15 s while a stream waits: how many pings come before an event
      // delivered by pubsub depends on how long the claim build took (on a loaded CI
      // machine the patched side once waited past 15 s). The event and what follows it are
      // compared, byte for byte; the pings before it are not counted.
      const body = r.body.replace(/^(?:event: ping\n\n)+(?=event: data\n)/, '');
      t = n(`${r.status} ${header(r, 'content-type')} ${json(body)}`);
      const done = o.marks?.claim_build_completed_ms;
      const at = r.reads?.find((x) => x.bytes.includes('event: data'))?.at_ms;
      if (done !== undefined && at !== undefined) t += at >= done ? ' (after the claim build completed)' : ' (BEFORE the claim build completed)';
    } else if (r.outcome === 'wait') {
      t = r.first_byte_ms < 0 ? 'waits (no byte)' : n(`waits: ${r.status} ${json(r.body)}`);
      if (r.query === 'wait=true' && o.scenario.startsWith('idle stream')) {
        // The wire row: when the head and the first ping came, and the bytes.
        const ping = r.reads?.find((x) => x.bytes.includes('event: ping'));
        t = `head at ${(r.head_ms / 1000).toFixed(1)} s, first ping at ${ping ? (ping.at_ms / 1000).toFixed(1) : '-'} s; body ${json(r.body)}`;
        const headWithPing = ping !== undefined && Math.abs(r.head_ms - ping.at_ms) < 200;
        const pingNear15 = ping !== undefined && Math.abs(ping.at_ms - 15_000) < 1_500;
        key = `wire: head with the first ping ${headWithPing}, first ping near 15 s ${pingNear15}, body ${json(r.body)}`;
      }
    } else if (r.outcome === 'ended') {
      t = n(`stream ended cleanly (${r.status ?? '-'}) ${json(r.body)}`);
    } else {
      t = `error: ${r.error}`;
    }
    parts.push(`raw ${r.query || '(no query)'}: ${t}`);
    keys.push(`raw:${key ?? t}`);
    if (r.outcome !== 'wait' || r.first_byte_ms >= 0) {
      keys.push(`head:${head}`);
      notes.push(`head ${head}`);
    }
  }
  if (o.loop) {
    const l = o.loop;
    const first = l.first_event ? n(`; first event ${l.first_event.reason} workspace=${l.first_event.workspace_id} owner=${l.first_event.owner_id ?? '(none)'}`) : '';
    const at = l.first_event_ms < 0 ? '' : ` at ${(l.first_event_ms / 1000).toFixed(1)} s`;
    const t = `${l.requests} /reinit request(s) in ${l.seconds.toFixed(0)} s, ${l.reinits} reinit(s), ${l.skipped} duplicate(s) skipped, ${l.closed}${first}${at}`;
    parts.push(`loop: ${t}${o.guard_saw !== undefined ? `; the guard counted ${o.guard_saw}` : ''}`);
    const done = o.marks?.claim_build_completed_ms;
    if (done !== undefined) {
      // The claim arrives while the loop runs: what matters is that the agent reinitialized
      // once, for the claim, after the claim build completed (measured: coderd's
      // completed_at), not how often it polled meanwhile.
      const when = l.first_event_ms < 0 ? '' : l.first_event_ms >= done ? ' after the claim build completed' : ' BEFORE the claim build completed';
      keys.push(`loop:${l.reinits}:${first}${when}`);
      parts.push(`(claim build completed at ${(done / 1000).toFixed(1)} s)`);
    } else {
      keys.push(`loop:${l.requests}:${l.reinits}:${l.skipped}:${l.closed}${first}`);
    }
  }
  return { key: keys.join(' || '), text: parts.join('; '), notes };
}

/** What is compared of an observation (no deviation applied): equal keys, equal behaviour. */
export const keyOf = (o: Observation): string => describe(o).key;

/** Every subset of the deviations that apply to the guard's head, smallest first. */
function deviationSets(g: Observation): string[][] {
  const guardHead = g.raw ? normalHeaders(g, g.raw) : [];
  const names = Object.keys(KNOWN_DEVIATIONS).filter((d) => KNOWN_DEVIATIONS[d]!.applies(guardHead));
  const sets: string[][] = [[]];
  for (const d of names) for (const s of [...sets]) sets.push([...s, d]);
  return sets.sort((a, b) => a.length - b.length);
}

/** Whether the guard's observation equals a column's, and under which known deviations. */
function matches(target: Observation, g: Observation): { ok: boolean; deviations: string[] } {
  for (const set of deviationSets(g)) {
    if (describe(target, set).key === describe(g, set).key) return { ok: true, deviations: set };
  }
  return { ok: false, deviations: [] };
}

/** The event a coderd seeds for a claimed prebuild, as the agent's reader sees it. */
const seededEventBody = '{"workspace_id":"<workspace>","reason":"prebuild_claimed","owner_id":"<owner>"}';
/** A seeded event arrives with the head at once; a pubsub event or a ping much later. */
const SEEDED_WITHIN_MS = 2500;

/** Why the unpatched observation is not the bug (a seeded prebuild_claimed), or null. */
export function notSeeded(u: Observation): string | null {
  const n = normalizer(u);
  const ev = (e: ReinitEvent | undefined) =>
    e && e.reason === 'prebuild_claimed' && e.workspace_id === u.workspace && e.owner_id === u.owner ? null : `event ${n(JSON.stringify(e ?? null))}`;
  if (u.loop) {
    const l = u.loop;
    if (l.reinits < 1) return `the loop did not reinitialize (${l.closed})`;
    const bad = ev(l.first_event);
    if (bad) return `the loop's first ${bad}`;
    if (l.first_event_ms > SEEDED_WITHIN_MS) return `the loop's first event came after ${l.first_event_ms} ms, not at once`;
    if (u.marks?.claim_build_completed_ms !== undefined && l.first_event_ms >= u.marks.claim_build_completed_ms) return 'the first event came after the claim build completed';
  }
  if (u.sdk) {
    const s = u.sdk;
    if (s.outcome !== 'event') return `the SDK saw no event (${s.outcome})`;
    const bad = ev(s.event);
    if (bad) return `the SDK's ${bad}`;
    if (s.at_ms > SEEDED_WITHIN_MS) return `the SDK's event came after ${s.at_ms} ms, not at once`;
  }
  if (u.raw) {
    const r = u.raw;
    const data = r.body.match(/^event: data\ndata: (.*)\n\n$/);
    if (r.outcome !== 'event' || r.status !== 200 || !/^text\/event-stream$/.test(header(r, 'content-type') ?? '')) return `the raw stream is not an event (${r.outcome} ${r.status})`;
    if (!data || n(data[1] ?? '') !== seededEventBody) return `the raw body is not one seeded event: ${json(n(r.body))}`;
    if (r.first_byte_ms > SEEDED_WITHIN_MS) return `the raw event came after ${r.first_byte_ms} ms, not at once`;
  }
  if (!u.loop && !u.sdk && !u.raw) return 'nothing observed';
  return null;
}

/** The held stream's row (guard column): ended cleanly, empty, after the claim build existed. */
function heldStreamEnded(g: Observation, oracle: Observation): string | null {
  const r = g.raw;
  const s = g.sdk;
  const created = g.marks?.claim_build_created_ms;
  if (!r || r.outcome !== 'ended' || r.status !== 200 || r.body !== '' || r.framing !== 'chunked') {
    return `the raw stream did not end cleanly and empty: ${r?.outcome} ${r?.status} ${r?.framing} ${json(r?.body ?? '')}`;
  }
  if (!s || s.outcome !== 'error' || !/EOF/.test(s.error ?? '')) return `the SDK did not see the stream end: ${s?.outcome} ${s?.error ?? ''}`;
  if (created === undefined || r.end_ms === undefined || r.end_ms < 0) return 'no claim-build mark or no end time';
  if (r.end_ms < created) return `the stream ended at ${r.end_ms} ms, before the claim build existed (${created} ms)`;
  if (r.end_ms > created + 5000) return `the stream ended at ${r.end_ms} ms, more than 5 s after the claim build existed (${created} ms)`;
  // Its head is coderd's, as the oracle's stream's head.
  const headOf = (o: Observation, set: string[]) => {
    let h = normalHeaders(o, o.raw!);
    for (const d of set) h = KNOWN_DEVIATIONS[d]!.rewrite(h);
    return JSON.stringify(h);
  };
  if (!oracle.raw || !deviationSets(g).some((set) => headOf(oracle, set) === headOf(g, set))) return 'its head is not the oracle stream\'s head';
  return null;
}

export interface Report {
  ok: boolean;
  text: string;
  markdown: string;
}

export function compare(all: Results[], opts: { shrunk?: boolean } = { shrunk: process.env.FIDELITY_STORM_WORKSPACES !== undefined }): Report {
  const rows = new Map<string, Map<string, Observation>>();
  const problems: string[] = [];
  for (const r of all) {
    for (const o of r.observations) {
      const id = `${o.scenario} / ${o.step}`;
      if (!rows.has(id)) rows.set(id, new Map());
      const cols = rows.get(id)!;
      if (cols.has(o.column)) problems.push(`row observed twice in the ${o.column} column: ${id}`);
      cols.set(o.column, o);
    }
  }
  const lines: string[] = [];
  const md: string[] = [
    '| scenario / step | latest build | patched coderd (oracle) | unpatched coderd | guard + unpatched | the guard must | guard as required |',
    '|---|---|---|---|---|---|---|',
  ];
  const versions = all.map((r) => `${r.side}: coder ${r.coder_version} (buildinfo ${r.buildinfo_version})`).join('; ');
  lines.push(versions, '');
  const used = new Map<string, number>();
  for (const id of rows.keys()) if (!(id in ROWS)) problems.push(`row not in compare.ts's ROWS (add it with what the guard must do): ${id}`);
  const cell = (t: string) => t.replaceAll('|', '\\|').replaceAll('\n', ' ');
  for (const [id, spec] of Object.entries(ROWS)) {
    const cols = rows.get(id) ?? new Map<string, Observation>();
    const p = cols.get('patched');
    const u = cols.get('unpatched');
    const g = cols.get('guard');
    const missing = COLUMNS.filter((c) => !cols.has(c));
    const dp = p && describe(p);
    const du = u && describe(u);
    const dg = g && describe(g);
    const why: string[] = [];
    let deviations: string[] = [];
    let must: string;
    if (missing.length) why.push(`missing in the ${missing.join(', ')} column(s)`);
    if (spec.custom) {
      must = spec.custom.requires;
      if (g && p && u) {
        const bad = spec.custom.check(g, { patched: p, unpatched: u });
        if (bad) why.push(bad);
        else deviations = deviationSets(g).find((set) => set.length > 0) ?? [];
      }
    } else if (spec.equalsUnpatched) {
      must = `equal the unpatched column: ${spec.equalsUnpatched}`;
      if (g && u) {
        const m = matches(u, g);
        if (!m.ok) why.push('guard differs from the unpatched column');
        deviations = m.deviations;
      }
    } else {
      must = 'equal the oracle';
      if (g && p) {
        const m = matches(p, g);
        if (!m.ok) why.push('guard differs from the oracle');
        deviations = m.deviations;
      }
    }
    if (spec.facts && g && p && u) {
      const bad = spec.facts.check(g, { patched: p, unpatched: u });
      if (bad) why.push(`${spec.facts.requires}: ${bad}`);
      must += `; ${spec.facts.requires}`;
    }
    const bug = !!dp && !!du && dp.key !== du.key;
    if (spec.bug) {
      must += '; the unpatched column must show the bug (a seeded prebuild_claimed)';
      const bad = u ? notSeeded(u) : 'no unpatched column';
      if (bad) why.push(`the unpatched coderd did not reproduce the bug: ${bad}`);
    }
    for (const d of deviations) used.set(d, (used.get(d) ?? 0) + 1);
    const ok = why.length === 0;
    if (!ok) problems.push(`${id}: ${why.join('; ')}`);
    const label = ok ? (deviations.length ? 'ok, known deviation' : 'ok') : 'MISMATCH';
    lines.push(`[${label}] ${id}`);
    lines.push(`    the guard must ${must}`);
    if (deviations.length) lines.push(`    known deviation(s): ${deviations.join(', ')}`);
    if (!ok) lines.push(`    NOT AS REQUIRED: ${why.join('; ')}`);
    lines.push(`    latest build   ${p?.latest_build ?? u?.latest_build ?? '-'}`);
    lines.push(`    patched        ${dp?.text ?? '(not run)'}`);
    lines.push(`    unpatched      ${du?.text ?? '(not run)'}${bug ? '   <- differs from patched' + (spec.bug ? ' (the bug)' : '') : ''}`);
    lines.push(`    guard          ${dg?.text ?? '(not run)'}`);
    for (const [name, d] of [['patched', dp], ['unpatched', du], ['guard', dg]] as const) {
      for (const note of d?.notes ?? []) lines.push(`      ${name} ${note}`);
    }
    if (g?.guard) lines.push(`      guard said: metrics ${JSON.stringify(g.guard.metrics)}; log ${g.guard.log.length} line(s)${g.guard.errors?.length ? `; errors ${g.guard.errors.join('; ')}` : ''}`);
    const result = !ok ? `**no**: ${cell(why.join('; '))}` : deviations.length ? `yes (known deviation: ${deviations.join(', ')})` : 'yes';
    md.push(`| ${cell(id)} | ${p?.latest_build ?? u?.latest_build ?? '-'} | ${cell(dp?.text ?? '-')} | ${cell(du?.text ?? '-')}${bug ? ' **(differs)**' : ''} | ${cell(dg?.text ?? '-')} | ${cell(spec.custom ? 'see text' : spec.equalsUnpatched ? 'equal unpatched' : 'equal the oracle')}${spec.bug ? '; bug shown' : ''}${spec.facts ? '; log/metrics' : ''} | ${result} |`);
  }
  lines.push('', 'Other checks:');
  md.push('', '| check | side | ok | detail |', '|---|---|---|---|');
  for (const r of all) {
    for (const c of r.checks) {
      if (!c.ok) problems.push(`${r.side}: ${c.name}`);
      if (!REQUIRED_CHECKS.some((req) => req.side === r.side && req.name.test(c.name))) problems.push(`${r.side}: check not in compare.ts's REQUIRED_CHECKS: ${c.name}`);
      lines.push(`  [${c.ok ? 'ok' : 'FAIL'}] ${r.side}: ${c.name}: ${c.detail}`);
      md.push(`| ${cell(c.name)} | ${r.side} | ${c.ok ? 'yes' : '**no**'} | ${cell(c.detail)} |`);
    }
  }
  for (const req of REQUIRED_CHECKS) {
    const found = all.find((r) => r.side === req.side)?.checks.filter((c) => req.name.test(c.name)) ?? [];
    let why = '';
    if (found.length !== 1) {
      why = found.length === 0 ? 'missing' : `present ${found.length} times`;
    } else if (req.minAgents !== undefined) {
      const agents = Number(req.name.exec(found[0]!.name)?.[1]);
      if (!opts.shrunk && !(agents >= req.minAgents)) why = `${agents} agents, fewer than ${req.minAgents}`;
    }
    if (why) {
      problems.push(`${req.side}: required check ${why}: ${req.name.source}`);
      lines.push(`  [FAIL] ${req.side}: required check ${why}: ${req.name.source}`);
      md.push(`| ${cell(req.name.source)} | ${req.side} | **no** | required check ${why} |`);
    }
  }
  if (used.size) {
    lines.push('', 'Known deviations (guard defects reported, allowed only in this exact shape):');
    for (const [d, count] of used) lines.push(`  - ${d} (${count} row(s)): ${KNOWN_DEVIATIONS[d]!.text}`);
  }
  lines.push('', 'Seconds:');
  for (const r of all) lines.push(`  ${r.side}: ${Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
  if (problems.length) lines.push('', 'Problems:', ...problems.map((p) => `  - ${p}`));
  return { ok: problems.length === 0, text: lines.join('\n'), markdown: md.join('\n') };
}

