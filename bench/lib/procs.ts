// Process helpers are shared with the adversarial tests (nginx as the reference proxy).
export * from '../../testkit/procs.js';
