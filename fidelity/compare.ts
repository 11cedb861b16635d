/**
 * Compares what the real agent SDK saw in three columns: the patched coderd (the oracle),
 * the unpatched coderd straight, and the guard in front of the unpatched coderd. Ids are
 * written as <workspace> and <owner> before comparing; everything else is compared as the
 * bytes arrived (status, Content-Type, body; the event's workspace, reason and owner; or
 * "waits").
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

/**
 * Rows where the fix changes what the agent sees: the unpatched coderd must differ from the
 * patched one there (it seeds a spurious event), or the harness failed to reproduce the bug.
 */
/**
 * The hold state (owner changed, latest build still the prebuilds user's, not the claim):
 * a patched coderd keeps the stream open and delivers the claim by pubsub; the unpatched
 * coderd it sits in front of has already dropped its subscription when it seeded, so a
 * guard can only give the agent an equivalent outcome (for example ending the stream so
 * that the agent reconnects and is judged again). Its single-request rows are shown; the
 * agent's loop decides: one reinit, for the claim, after the claim build.
 */
export const AGENT_LEVEL_ROWS = ['hold: owner changed, claim build not created yet / '];
export const DECIDING_ROW = "hold: owner changed, claim build not created yet / the agent's reinit loop over the same time";

/**
 * Rows where the guard may differ from the oracle by decision, each with the reason printed
 * beside it. Empty: every difference fails the run. A row belongs here only when matching
 * the oracle would break one of the guard's principles (for example: a stop build running
 * on a long-claimed workspace, where the fixed coderd answers 409 but the unpatched one seeds
 * nothing, so the guard sees no event and could name the workspace only from the agent's
 * token).
 */
export const ACCEPTED_DIFFERENCES: Record<string, string> = {
  'long claimed: user stop in progress / agent reconnects while the stop build runs':
    'the unpatched coderd seeds nothing here (it waits), so there is no event to judge; answering 409 would mean ' +
    'reading agent tokens from the database, beyond the least-privilege role. The agent sees no reinit either way, ' +
    'and the stop ends the agent; when the workspace starts again, the seeded event is answered with the 409',
};

export const BUG_ROWS = [
  'claim failed, owner retried with a start / agent (re)connects',
  'long claimed: user start after the claim / wait=1',
  'long claimed: user start after the claim / wait=true (the agent)',
  'long claimed: latest build is a stop / agent (re)connects',
  'agent loop against a long-claimed workspace / the agent loop over the window',
];

/**
 * Checks with no oracle row that must be present: a missing one fails the run as a failing
 * one does. The first number in the name counts agents; it must reach `minAgents` (the
 * acceptance point: at least 200 agents) unless the run was shrunk on purpose with
 * FIDELITY_STORM_WORKSPACES (a development run).
 */
export const REQUIRED_CHECKS: { side: Results['side']; name: RegExp; minAgents: number }[] = [
  { side: 'unpatched', name: /^reconnect storm: (\d+) agents on \d+ workspaces after a guard restart$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart \(guard column\): a new coderd on the same database and address while (\d+) agents run their loops$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart through the guard: (\d+) long-claimed agents on \d+ workspaces, every loop ended by a 409, 0 reinits$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart through the guard: (\d+) agents on \d+ workspaces whose claim build is the latest, each claim delivered once$/, minAgents: 2 },
  { side: 'unpatched', name: /^coderd restart \(unpatched column\): a new coderd on the same database and address while (\d+) agents run their loops$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart straight to the unpatched coderd: (\d+) long-claimed agents on \d+ workspaces, spurious reinits \(the bug\)$/, minAgents: 200 },
  { side: 'unpatched', name: /^coderd restart straight to the unpatched coderd: (\d+) agents on \d+ workspaces whose claim build is the latest, each claim delivered once$/, minAgents: 2 },
];

const PREBUILDS_USER = 'c42fdf75-3097-471c-8c33-fb52454d81c0';

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

/** The first data event of an SSE body (the bytes the agent acts on). */
function firstDataEvent(body: string): string {
  const i = body.indexOf('event: data\n');
  if (i < 0) return '';
  const j = body.indexOf('\n\n', i);
  return body.slice(i, j < 0 ? undefined : j + 2);
}

/** What must be equal between columns, and how it is shown. */
function describe(o: Observation): { key: string; text: string; notes: string[] } {
  const n = normalizer(o);
  const parts: string[] = [];
  const keys: string[] = [];
  const notes: string[] = [];
  if (o.sdk) {
    const s = o.sdk;
    let t: string;
    if (s.outcome === 'event' && s.event) {
      t = n(`event ${s.event.reason} workspace=${s.event.workspace_id} owner=${s.event.owner_id ?? '(none)'}`);
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
    let t: string;
    if (r.outcome === 'http') {
      t = n(`${r.status} ${header(r, 'content-type') ?? '(no content-type)'} ${json(r.body)}`);
    } else if (r.outcome === 'event') {
      t = n(`${r.status} ${header(r, 'content-type')} ${json(firstDataEvent(r.body))}`);
    } else if (r.outcome === 'wait') {
      t = r.first_byte_ms < 0 ? 'waits (no byte)' : `waits (${json(r.body)})`;
      if (r.query === 'wait=true' && o.scenario.startsWith('idle stream')) {
        // The wire row: when the head and the first ping came, and the bytes.
        const ping = r.reads?.find((x) => x.bytes.includes('event: ping'));
        t = `head at ${(r.head_ms / 1000).toFixed(1)} s, first ping at ${ping ? (ping.at_ms / 1000).toFixed(1) : '-'} s; body ${json(r.body)}; ${r.framing}`;
        const headWithPing = ping !== undefined && Math.abs(r.head_ms - ping.at_ms) < 200;
        const pingNear15 = ping !== undefined && Math.abs(ping.at_ms - 15_000) < 1_500;
        keys.push(`wire:${headWithPing}:${pingNear15}:${json(r.body)}:${r.framing}`);
        parts.push(`raw ${t}`);
        return { key: keys.join(' | '), text: parts.join('; '), notes };
      }
    } else if (r.outcome === 'ended') {
      t = n(`stream ended (${r.status ?? '-'}) ${json(r.body)}`);
    } else {
      t = `error: ${r.error}`;
    }
    parts.push(`raw ${r.query || '(no query)'}: ${t}`);
    keys.push(`raw:${t}`);
    if (r.headers) notes.push(`headers: ${r.headers.map(([k]) => k).join(', ')}; framing ${r.framing}`);
  }
  if (o.loop) {
    const l = o.loop;
    const first = l.first_event ? n(`; first event ${l.first_event.reason} owner=${l.first_event.owner_id ?? '(none)'}`) : '';
    const at = l.first_event_ms < 0 ? '' : ` at ${(l.first_event_ms / 1000).toFixed(1)} s`;
    const t = `${l.requests} /reinit request(s) in ${l.seconds.toFixed(0)} s, ${l.reinits} reinit(s), ${l.skipped} duplicate(s) skipped, ${l.closed}${first}${at}`;
    parts.push(`loop: ${t}${o.guard_saw !== undefined ? `; the guard counted ${o.guard_saw}` : ''}`);
    // The hold row: what matters is whether the agent reinitialized once, for the claim, after
    // the claim build (it is created 3 s into the window), not how often it polled meanwhile.
    const when = l.first_event_ms < 0 ? '' : l.first_event_ms >= 3000 ? ' after the claim build' : ' before the claim build';
    keys.push(o.scenario.startsWith('hold') ? `loop:${l.reinits}:${first}${when}` : `loop:${l.requests}:${l.reinits}:${l.skipped}:${l.closed}`);
  }
  return { key: keys.join(' | '), text: parts.join('; '), notes };
}

export interface Report {
  ok: boolean;
  text: string;
  markdown: string;
}

export function compare(all: Results[], opts: { shrunk?: boolean } = { shrunk: process.env.FIDELITY_STORM_WORKSPACES !== undefined }): Report {
  const rows = new Map<string, Map<string, Observation>>();
  for (const r of all) {
    for (const o of r.observations) {
      const id = `${o.scenario} / ${o.step}`;
      if (!rows.has(id)) rows.set(id, new Map());
      rows.get(id)!.set(o.column, o);
    }
  }
  const lines: string[] = [];
  const md: string[] = ['| scenario / step | latest build | patched coderd (oracle) | unpatched coderd | guard + unpatched | guard = oracle |', '|---|---|---|---|---|---|'];
  let ok = true;
  const problems: string[] = [];
  const versions = all.map((r) => `${r.side}: coder ${r.coder_version} (buildinfo ${r.buildinfo_version})`).join('; ');
  lines.push(versions, '');
  for (const [id, cols] of rows) {
    const p = cols.get('patched');
    const u = cols.get('unpatched');
    const g = cols.get('guard');
    const dp = p && describe(p);
    const du = u && describe(u);
    const dg = g && describe(g);
    const informational = AGENT_LEVEL_ROWS.some((r) => id.startsWith(r)) && id !== DECIDING_ROW;
    const accepted = ACCEPTED_DIFFERENCES[id];
    const guardOk = informational || accepted !== undefined || (!!dp && !!dg && dp.key === dg.key);
    const bug = !!dp && !!du && dp.key !== du.key;
    if (!guardOk) {
      ok = false;
      problems.push(`guard differs from the oracle: ${id}`);
    }
    if (BUG_ROWS.includes(id) && !bug) {
      ok = false;
      problems.push(`the unpatched coderd did not reproduce the bug: ${id}`);
    }
    const same = !!dp && !!dg && dp.key === dg.key;
    const differsAsAccepted = accepted !== undefined && !same;
    const label = !guardOk ? 'MISMATCH' : differsAsAccepted ? 'accepted' : informational && !same ? 'shown' : 'ok';
    lines.push(`[${label}] ${id}${informational ? ' (agent-level row: the loop below decides)' : ''}${differsAsAccepted ? ` (accepted difference: ${accepted})` : ''}`);
    lines.push(`    latest build   ${p?.latest_build ?? u?.latest_build ?? '-'}`);
    lines.push(`    patched        ${dp?.text ?? '(not run)'}`);
    lines.push(`    unpatched      ${du?.text ?? '(not run)'}${bug ? '   <- differs from patched' + (BUG_ROWS.includes(id) ? ' (the bug)' : '') : ''}`);
    lines.push(`    guard          ${dg?.text ?? '(not run)'}`);
    for (const [name, d] of [['patched', dp], ['unpatched', du], ['guard', dg]] as const) {
      for (const note of d?.notes ?? []) lines.push(`      ${name} ${note}`);
    }
    const cell = (d?: { text: string }) => (d ? d.text.replaceAll('|', '\\|').replaceAll('\n', ' ') : '-');
    md.push(`| ${id} | ${p?.latest_build ?? '-'} | ${cell(dp)} | ${cell(du)}${bug ? ' **(differs)**' : ''} | ${cell(dg)} | ${!guardOk ? '**no**' : informational && !same ? 'differs; the loop row decides' : 'yes'} |`);
  }
  lines.push('', 'Other checks:');
  md.push('', '| check | side | ok | detail |', '|---|---|---|---|');
  for (const r of all) {
    for (const c of r.checks) {
      if (!c.ok) {
        ok = false;
        problems.push(`${r.side}: ${c.name}`);
      }
      lines.push(`  [${c.ok ? 'ok' : 'FAIL'}] ${r.side}: ${c.name}: ${c.detail}`);
      md.push(`| ${c.name} | ${r.side} | ${c.ok ? 'yes' : '**no**'} | ${c.detail.replaceAll('|', '\\|')} |`);
    }
  }
  for (const req of REQUIRED_CHECKS) {
    const found = all.find((r) => r.side === req.side)?.checks.filter((c) => req.name.test(c.name)) ?? [];
    let why = '';
    if (found.length !== 1) {
      why = found.length === 0 ? 'missing' : `present ${found.length} times`;
    } else {
      const agents = Number(req.name.exec(found[0]!.name)?.[1]);
      if (!opts.shrunk && !(agents >= req.minAgents)) why = `${agents} agents, fewer than ${req.minAgents}`;
    }
    if (why) {
      ok = false;
      problems.push(`${req.side}: required check ${why}: ${req.name.source}`);
      lines.push(`  [FAIL] ${req.side}: required check ${why}: ${req.name.source}`);
      md.push(`| ${req.name.source.replaceAll('|', '\\|')} | ${req.side} | **no** | required check ${why} |`);
    }
  }
  lines.push('', 'Seconds:');
  for (const r of all) lines.push(`  ${r.side}: ${Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
  if (problems.length) lines.push('', 'Problems:', ...problems.map((p) => `  - ${p}`));
  return { ok, text: lines.join('\n'), markdown: md.join('\n') };
}
