import type { LogLevel } from '../config/index.js';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Fields of one log line. Callers pass ids and outcomes, never headers or bodies. */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

/** A structured JSON logger: one object per line, `level`, `time`, `msg`, then fields. */
export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

/**
 * Creates a logger writing JSON lines to `sink` (stdout by default).
 *
 * @example
 * const log = createLogger('info');
 * log.info('reinit decision', { workspace_id: id, outcome: 'suppressed' });
 */
export function createLogger(level: LogLevel, sink: (line: string) => void = (l) => process.stdout.write(l)): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel) => (msg: string, fields?: LogFields) => {
    if (RANK[lvl] < min) return;
    sink(`${JSON.stringify({ level: lvl, time: new Date().toISOString(), msg, ...fields })}\n`);
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

/** A logger that drops everything (tests that do not look at logs). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** The first lines of a stack, bounded: enough to find the bug, never a flood. */
const shortStack = (err: unknown): string | null => (err instanceof Error && err.stack ? err.stack.split('\n').slice(0, 8).join('\n').slice(0, 2000) : null);

/**
 * Routes what Node itself would print as plain text on stderr through the JSON log, so that
 * every line the guard writes parses (the primary's and every worker's): process warnings
 * (Node's own printer is removed), and a fatal error, logged before the process exits 1.
 * Node's messages name modules and syscalls, not request data; stacks are bounded.
 */
export function logProcessOutput(log: Logger, role: string): void {
  process.removeAllListeners('warning');
  process.on('warning', (w) => log.warn('node warning', { role, name: w.name, warning: w.message.slice(0, 500), code: (w as { code?: string }).code ?? null }));
  const fatal = (kind: string) => (err: unknown) => {
    log.error('fatal error: exiting', { role, kind, error: err instanceof Error ? err.message.slice(0, 500) : String(err).slice(0, 500), code: (err as { code?: string } | null)?.code ?? null, stack: shortStack(err) });
    process.exit(1);
  };
  process.on('uncaughtException', fatal('uncaught_exception'));
  process.on('unhandledRejection', fatal('unhandled_rejection'));
}
