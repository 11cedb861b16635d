import { describeConfig, loadConfig } from './config/index.js';
import { createLogger } from './observability/log.js';
import { startGuard } from './server/index.js';

/** Exit status for a configuration the guard refuses to start with. */
const EXIT_CONFIG = 2;

async function main(): Promise<void> {
  const result = loadConfig(process.env);
  if (!result.ok) {
    process.stderr.write(`coder-reinit-guard: invalid configuration (${result.problems.length} problem${result.problems.length > 1 ? 's' : ''}):\n${result.problems.map((p) => `  - ${p}`).join('\n')}\n`);
    process.exit(EXIT_CONFIG);
  }
  const { config } = result;
  const log = createLogger(config.logLevel);
  const guard = await startGuard(config, { log });
  log.info('coder-reinit-guard started', {
    ...(describeConfig(config) as Record<string, string | number | null>),
    proxy_port: guard.proxyAddress.port,
    admin_port: guard.adminAddress.port,
  });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    guard.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`coder-reinit-guard: failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
