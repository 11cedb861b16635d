import { closest } from './config/suggest.js';

/** The guard's usage text (`--help`, and after a command line it does not understand). */
export const USAGE = `usage: coder-reinit-guard [command]

Guards an unpatched Coder 2.34 coderd against spurious prebuild_claimed reinit events.

Commands:
  (none)      run the proxy, configured by REINIT_GUARD_* environment variables
  audit       read-only report of the workspaces the bug hits (audit --help)

Options:
  -h, --help      print this help and exit
  -V, --version   print the guard's version and exit

Configuration: every REINIT_GUARD_* variable, its default and its rule are in
docs/configuration.md of the guard's source repository.
`;

/** Exit status for a command line the guard does not understand (as for a bad configuration). */
export const EXIT_USAGE = 2;

/**
 * What the command line asks for. Decided before any configuration is read or any port is
 * bound: `--help` must never start a proxy.
 */
export function parseCommand(argv: readonly string[]): { run: 'proxy' | 'audit' | 'help' | 'version' } | { run: 'usage-error'; problem: string } {
  const [first] = argv;
  if (first === undefined) return { run: 'proxy' };
  if (first === 'audit') return { run: 'audit' };
  if (first === '-h' || first === '--help' || first === 'help') return { run: 'help' };
  if (first === '-V' || first === '--version' || first === 'version') return { run: 'version' };
  const what = first.startsWith('-') ? `unknown option "${first}"` : `unknown command "${first}"`;
  const near = closest(first.replace(/^-+/, ''), ['audit', 'help', 'version']);
  return { run: 'usage-error', problem: `${what}${near ? ` (did you mean "${near}"?)` : ''}` };
}

