import type { Logger } from '../observability/log.js';

/** One probe's answer. */
export interface ProbeResult {
  ok: boolean;
  detail?: string;
  /** What this failure means for clients, when it differs from the dependency's usual one. */
  effect?: string;
}

/** What the guard last learned about one dependency. */
export interface DependencyState {
  /** null until the first probe answered. */
  up: boolean | null;
  detail: string | null;
  /** When `up` last changed (ISO 8601), or null before the first probe. */
  since: string | null;
}

/** Options of the dependency watcher. */
export interface DependencyWatchOptions {
  /** One probe per dependency (`database`, `coderd`); each bounds its own time. */
  probes: Record<string, () => Promise<ProbeResult>>;
  intervalMs: number;
  log: Logger;
  /** What clients get while a dependency is down, for the log line (`effect`). */
  effects?: Record<string, string>;
  /** Told on every probe answer (for the gauge), with whether `up` changed. */
  onProbe?: (name: string, state: DependencyState) => void;
}

/**
 * Watches the guard's dependencies: coderd and, unless the mode is off, its database.
 * Their state is information, never readiness: the guard fails open without its database
 * and answers 502 in coderd's shape without coderd, so a pod that lost either still proxies
 * better than no pod. Were readiness to follow them, every replica would leave the `coder`
 * Service at once (they share both dependencies) and a partial outage would become a total
 * one. Each change is logged once; the state is shown by /readyz and the
 * `coder_reinit_guard_dependency_up` gauge.
 */
export function watchDependencies(opts: DependencyWatchOptions): { state: () => Record<string, DependencyState>; stop: () => void } {
  const states: Record<string, DependencyState> = Object.fromEntries(Object.keys(opts.probes).map((n) => [n, { up: null, detail: null, since: null }]));
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;

  const probe = async (name: string, run: () => Promise<ProbeResult>) => {
    const result = await run().catch((err: unknown): ProbeResult => ({ ok: false, detail: err instanceof Error ? err.message : String(err) }));
    if (stopped) return;
    const prev = states[name] as DependencyState;
    const detail = result.ok ? null : (result.detail ?? 'unknown').slice(0, 300);
    if (prev.up !== result.ok) {
      if (result.ok) opts.log.info('dependency up', { dependency: name, was: prev.up === null ? 'unknown' : 'down' });
      else opts.log.warn('dependency down', { dependency: name, detail, was: prev.up === null ? 'unknown' : 'up', effect: result.effect ?? opts.effects?.[name] ?? 'the guard keeps proxying; readiness is unchanged' });
    }
    states[name] = { up: result.ok, detail, since: prev.up === result.ok ? prev.since : new Date().toISOString() };
    opts.onProbe?.(name, states[name] as DependencyState);
  };

  const round = async () => {
    await Promise.all(Object.entries(opts.probes).map(([n, run]) => probe(n, run)));
    if (stopped) return;
    timer = setTimeout(() => void round(), opts.intervalMs);
    timer.unref();
  };
  void round();

  return {
    state: () => ({ ...states }),
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
