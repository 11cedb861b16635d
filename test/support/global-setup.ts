import type { TestProject } from 'vitest/node';
import { startEmbeddedPg } from '../../testkit/pg.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Superuser URL of the run's embedded PostgreSQL (database "postgres"). */
    pgSuperuserUrl: string;
  }
}

/** One embedded PostgreSQL for the whole run, with coderd's schema as a template database. */
export default async function setup(project: TestProject) {
  const pg = await startEmbeddedPg({ withSchemaTemplate: true });
  project.provide('pgSuperuserUrl', pg.url());
  return async () => {
    await pg.stop();
  };
}
