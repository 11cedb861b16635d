#!/usr/bin/env node
// First, for its side effect: a V8 setting that must hold before any traffic (gc-tuning.ts).
import './gc-tuning.js';
import cluster from 'node:cluster';
import { describeConfig, loadConfig, unknownVariables, type Config } from './config/index.js';
import { runAudit } from './audit/index.js';
import { createLogger, logProcessOutput, type Logger } from './observability/log.js';
import { runPrimary, runWorker } from './server/cluster.js';
import { hurryShutdown, startGuard } from './server/index.js';
import { GUARD_VERSION } from './lifecycle/version.js';
import { EXIT_USAGE, USAGE, parseCommand } from './cli.js';

/** Exit status for a configuration the guard refuses to start with. */
const EXIT_CONFIG = 2;

/**
 * Runs `stop` once on SIGTERM/SIGINT, then exits 0 (1 if stopping failed). SIGTERM (Kubernetes)
 * gets the shutdown delay; SIGINT (a terminal's Ctrl-C) does not, and a second signal during the
 * delay cuts it short.
 */
function onSignals(log: Logger, delayMs: number, stop: (delayMs: number) => Promise<void>): void {
  let stopping = false;
  const handle = (signal: string) => {
    if (stopping) return hurryShutdown();
    stopping = true;
    log.info('shutting down', { signal });
    stop(signal === 'SIGTERM' ? delayMs : 0).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => handle('SIGTERM'));
  process.on('SIGINT', () => handle('SIGINT'));
}

/** The JSON log, once the configuration was read (for a failure to start). */
let startLog: Logger | null = null;

async function main(): Promise<void> {
  const command = parseCommand(process.argv.slice(2));
  if (command.run === 'help') return void process.stdout.write(USAGE);
  if (command.run === 'version') return void process.stdout.write(`coder-reinit-guard ${GUARD_VERSION}\n`);
  if (command.run === 'usage-error') {
    process.stderr.write(`coder-reinit-guard: ${command.problem}\n\n${USAGE}`);
    process.exit(EXIT_USAGE);
  }
  if (command.run === 'audit') {
    const code = await runAudit(process.argv.slice(3), process.env, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
    process.exitCode = code;
    return;
  }
  const result = loadConfig(process.env);
  if (!result.ok) {
    const n = result.problems.length;
    process.stderr.write(`coder-reinit-guard: invalid configuration (${n} problem${n > 1 ? 's' : ''}):\n${result.problems.map((p) => `  - ${p}`).join('\n')}\n`);
    process.exit(EXIT_CONFIG);
  }
  const config: Config = result.config;
  const log = createLogger(config.logLevel);
  const role = config.workers > 1 ? (cluster.isWorker ? 'worker' : 'primary') : 'guard';
  logProcessOutput(log, role);
  startLog = log;
  if (!cluster.isWorker) {
    for (const { variable, didYouMean } of unknownVariables(process.env)) {
      log.warn('unknown configuration variable ignored', { variable, did_you_mean: didYouMean, effect: 'none: the setting it may have meant keeps its value' });
    }
  }

  if (config.workers > 1 && cluster.isWorker) return runWorker(config, log);

  const started = (fields: Record<string, number>) =>
    log.info('coder-reinit-guard started', { ...(describeConfig(config) as Record<string, string | number | null>), ...fields });
  if (config.workers > 1) {
    const primary = await runPrimary(config, log, config.shutdownGraceMs);
    started({ workers: config.workers });
    onSignals(log, config.shutdownDelayMs, (delay) => primary.stop(delay));
  } else {
    const guard = await startGuard(config, { log });
    started({ proxy_port: guard.proxyAddress.port, admin_port: guard.adminAddress.port, listen_sockets: guard.listenSockets });
    onSignals(log, config.shutdownDelayMs, (delay) => guard.close(config.shutdownGraceMs, delay));
  }
}

main().catch((err: unknown) => {
  // With the configuration read, the log is JSON (every line, in every worker); before it,
  // the message is for the person at the terminal.
  if (startLog) startLog.error('failed to start', { error: err instanceof Error ? err.message : String(err), code: (err as { code?: string } | null)?.code ?? null });
  else process.stderr.write(`coder-reinit-guard: failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
