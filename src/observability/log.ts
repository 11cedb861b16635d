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
