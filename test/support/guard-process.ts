import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../testkit/pg.js';
import { waitFor } from './env.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** The guard as its own process (its memory and handles measured apart from the test's). */
export interface GuardProcess {
  child: ChildProcess;
  url: string;
  adminUrl: string;
  out: { stdout: string; stderr: string };
  exited: Promise<number | null>;
  /** Resident set size now and at its peak, in bytes (from /proc). */
  memory(): { rss: number; peak: number };
  /** Sets the peak back to the current RSS. */
  resetPeak(): void;
  stop(): Promise<number | null>;
}

/** A spawned entry point with its output collected and its exit status awaited. */
export interface Spawned {
  child: ChildProcess;
  out: { stdout: string; stderr: string };
  exited: Promise<number | null>;
}

/**
 * Runs the real entry point (`src/main.ts` via tsx, as `npm start` runs dist/main.js) with
 * `args` and only PATH plus `env` in its environment.
 */
export function spawnEntryPoint(env: Record<string, string>, args: string[] = []): Spawned {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
    cwd: root,
    // No shutdown delay unless a test asks for one: tests stop guards by the dozen.
    env: { PATH: process.env.PATH ?? '', REINIT_GUARD_SHUTDOWN_DELAY: '0s', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (c: Buffer) => (out.stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out.stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, out, exited };
}

/** Starts the guard from its entry point on free loopback ports and waits until it serves. */
export async function startGuardProcess(env: Record<string, string>): Promise<GuardProcess> {
  // A port found free can be taken before the guard binds it (other test files open
  // thousands of outbound connections, each on an ephemeral port): try fresh ports again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnFreePorts(env);
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE/.test(String(err))) throw err;
    }
  }
}

async function startOnFreePorts(env: Record<string, string>): Promise<GuardProcess> {
  const [port, admin] = [await freePort(), await freePort()];
  const { child, out, exited } = spawnEntryPoint({ REINIT_GUARD_LISTEN: `127.0.0.1:${port}`, REINIT_GUARD_ADMIN_LISTEN: `127.0.0.1:${admin}`, ...env });
  await waitFor(() => out.stdout.includes('coder-reinit-guard started') || child.exitCode !== null, 20_000, 'the guard process to start');
  if (child.exitCode !== null) {
    await exited;
    throw new Error(`guard exited ${child.exitCode}: ${out.stderr}`);
  }
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${admin}`,
    out,
    exited,
    memory: () => ({ rss: kib('VmRSS'), peak: kib('VmHWM') }),
    // Linux resets the peak (VmHWM) to the current RSS on "5" (proc(5), clear_refs): a
    // measurement then sees only its own peak, not an earlier test's.
    resetPeak: () => writeFileSync(`/proc/${child.pid}/clear_refs`, '5'),
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
