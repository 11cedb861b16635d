/** The unpatched coderd stand-in as its own process, for the /reinit scenarios. */
import { startCoderdStandin } from '../testkit/coderd-standin.js';

await startCoderdStandin({ pgUrl: process.env.PG_URL as string, port: Number(process.env.PORT), pingIntervalMs: 15_000, poolSize: 16 });
