/**
 * The comparison judged against itself (issue 19: "every row asserts something about the
 * guard"): on this run's own results, each row's guard column is made to misbehave in the
 * ways that matter, and compare() must reject every one of them for that very row. A row
 * that still passes with a guard that misbehaved is a row that cannot fail, and fails the run.
 *
 * Misbehaviours tried, where they differ from what the row requires:
 * - the guard does what the unpatched coderd does (rows that must equal the oracle);
 * - the guard does what the oracle does (rows that must equal the unpatched column);
 * - the guard column is missing;
 * - the guard adds a header, or changes the framing (rows with a response head);
 * - the guard said nothing in its log and metrics (rows with requirements on them), or, where
 *   it must say nothing (mode off, retired), it counted and logged a decision;
 * - the unpatched coderd did what the patched one does (rows that must show the bug).
 */
import { compare, keyOf, ROWS, type Observation, type Results } from './compare.js';

const rowId = (o: Observation) => `${o.scenario} / ${o.step}`;

export interface SelfTest {
  ok: boolean;
  tried: number;
  /** Misbehaviours compare() accepted: row, what was done. */
  accepted: string[];
}

export function selfTest(results: Results[]): SelfTest {
  const clone = () => structuredClone(results) as Results[];
  const find = (all: Results[], id: string, column: string) => all.flatMap((r) => r.observations).find((o) => rowId(o) === id && o.column === column);
  const accepted: string[] = [];
  let tried = 0;
  const expectRejected = (id: string, what: string, mutate: (all: Results[]) => boolean) => {
    const all = clone();
    if (!mutate(all)) return;
    tried++;
    const report = compare(all, { shrunk: true });
    const problems = report.text.split('\nProblems:\n')[1] ?? '';
    if (report.ok || !problems.includes(id)) accepted.push(`${id}: ${what}`);
  };
  const same = (a: Observation, b: Observation) => keyOf(a) === keyOf(b);
  for (const [id, spec] of Object.entries(ROWS)) {
    const p = find(results, id, 'patched');
    const u = find(results, id, 'unpatched');
    const g = find(results, id, 'guard');
    if (!p || !u || !g) continue;
    const become = (from: Observation) => (all: Results[]) => {
      const target = find(all, id, 'guard')!;
      Object.assign(target, { sdk: from.sdk, raw: from.raw, loop: from.loop });
      return true;
    };
    if (!spec.equalsUnpatched && !same(u, p)) expectRejected(id, 'the guard did what the unpatched coderd did', become(u));
    if (spec.equalsUnpatched && !same(u, p)) expectRejected(id, 'the guard did what the oracle did', become(p));
    expectRejected(id, 'the guard column is missing', (all) => {
      for (const r of all) r.observations = r.observations.filter((o) => !(rowId(o) === id && o.column === 'guard'));
      return true;
    });
    if (g.raw?.headers?.length) {
      expectRejected(id, 'the guard added a header', (all) => {
        find(all, id, 'guard')!.raw!.headers!.push(['X-Added-By-Guard', '1']);
        return true;
      });
      expectRejected(id, 'the guard changed the framing', (all) => {
        const raw = find(all, id, 'guard')!.raw!;
        raw.framing = raw.framing === 'chunked' ? 'close' : 'chunked';
        return true;
      });
    }
    if (spec.facts && g.guard) {
      const silent: Observation = { ...g, guard: { metrics: {}, log: [] } };
      if (spec.facts.check(silent, { patched: p, unpatched: u }) !== null) {
        expectRejected(id, 'the guard said nothing in its log and metrics', (all) => {
          find(all, id, 'guard')!.guard = { metrics: {}, log: [] };
          return true;
        });
      } else {
        // A row that requires silence (mode off, retired): the guard decided about /reinit.
        expectRejected(id, 'the guard counted and logged a /reinit decision', (all) => {
          const facts = find(all, id, 'guard')!.guard!;
          facts.metrics['coder_reinit_guard_reinit_requests_total{outcome="passed",reason="claim_build_is_latest"}'] = 1;
          facts.log.push(JSON.stringify({ level: 'info', msg: 'reinit decision', outcome: 'passed', workspace_id: g.workspace }));
          return true;
        });
      }
    }
    if (spec.facts && g.guard_saw !== undefined) {
      expectRejected(id, 'the guard counted another number of /reinit requests', (all) => {
        find(all, id, 'guard')!.guard_saw = (g.guard_saw ?? 0) + 1;
        return true;
      });
    }
    if (spec.bug) {
      expectRejected(id, 'the unpatched coderd did what the patched one does', (all) => {
        Object.assign(find(all, id, 'unpatched')!, { sdk: p.sdk, raw: p.raw, loop: p.loop });
        return true;
      });
    }
  }
  return { ok: accepted.length === 0, tried, accepted };
}
