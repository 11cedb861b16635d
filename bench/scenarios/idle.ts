import { startContender } from '../lib/contenders.js';
import { freePort, startNode } from '../lib/procs.js';
import { round } from '../lib/stats.js';

export interface IdleResult {
  connections: number;
  sse: number;
  websocket: number;
  opened: number;
  errors: number;
  errorKinds: Record<string, number>;
  guardRssMiB: number;
  workers: string;
}

/**
 * Opens `n` idle long-lived connections through the guard (half SSE, half WebSocket) from
 * a separate client process, then reads the guard's resident memory (all its processes).
 */
export async function runIdle(opts: { connections: number; workers: string; guardEnv: Record<string, string> }): Promise<IdleResult> {
  const upPort = await freePort();
  const up = await startNode('node-upstream', 'bench/upstream-node.ts', upPort);
  const g = await startContender('guard', `http://127.0.0.1:${upPort}`, { ...opts.guardEnv, REINIT_GUARD_WORKERS: opts.workers });
  const clientPort = await freePort();
  try {
    const client = await startNode('idle-client', 'bench/idle-client.ts', clientPort, { TARGET: g.url, CONNECTIONS: String(opts.connections) });
    try {
      const report = (await (await fetch(`http://127.0.0.1:${clientPort}/wait`)).json()) as { opened: number; errors: number; errorKinds: Record<string, number>; sse: number; websocket: number };
      const rss = g.proc!.rss();
      if (process.env.BENCH_DEBUG) {
        const { execSync } = await import('node:child_process');
        process.stderr.write(execSync(`for p in ${g.proc!.child.pid} $(cat /proc/${g.proc!.child.pid}/task/*/children); do echo $p $(ls /proc/$p/fd | wc -l) $(grep 'open files' /proc/$p/limits); done`, { encoding: 'utf8' }));
      }
      if (report.errors) process.stderr.write(`  guard log tail:\n${g.proc!.log().slice(-1500)}\n  upstream log tail:\n${up.log().slice(-800)}\n`);
      process.stderr.write(`  idle: ${report.opened}/${opts.connections} open, ${report.errors} errors ${JSON.stringify(report.errorKinds)}, guard RSS ${round(rss / 1048576, 0)} MiB\n`);
      return { connections: opts.connections, ...report, guardRssMiB: round(rss / 1048576, 0), workers: opts.workers };
    } finally {
      await client.stop();
    }
  } finally {
    await g.proc?.stop();
    await up.stop();
  }
}
