import v8 from 'node:v8';

/**
 * Turns off V8's allocation-site pretenuring, before the guard serves anything. Imported
 * first by main.ts, for its side effect only.
 *
 * Why: under keep-alive traffic V8 decided that some of the guard's per-request allocation
 * sites outlive a scavenge (every object it sampled there had survived one) and began to
 * allocate their objects straight in the old generation. They die there a millisecond later,
 * so every scavenge then had ~4 MB of old-to-new references to walk and the old generation
 * filled with garbage until a full collection: scavenges took 2.6-8 ms instead of 0.4-0.8 ms
 * (`--trace-gc`, wrk on a small GET, Node 26). Those pauses were the guard's p99 (6.4-9.9 ms
 * against 3.1-3.3 ms without them) and a fifth of its throughput. The minimal undici proxy of
 * the bench never triggered it. The guard's long-lived objects (the verdict cache, the pool's
 * connections) are few and are promoted after two scavenges as before; a reconnect storm,
 * whose objects live for seconds, measured no slower and no larger without it.
 * bench/results/NOTES.md has the runs.
 */
v8.setFlagsFromString('--no-allocation-site-pretenuring');
