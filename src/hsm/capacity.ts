/**
 * How many requests per second the HSM link can carry, from the configuration and the measured
 * per-call latency: KMS sends up to 1800 requests per second to one external key store (XKS
 * specification, "Throttling"), and a network HSM spends a round trip of 0.5-5 ms in every call.
 *
 * - hsm.callMode 'sync': one call at a time, on the event loop: 1000 / latency per second.
 * - hsm.callMode 'async': one call per session on libuv's thread pool, so
 *   min(hsm.pool.size, threads left for HSM calls) x 1000 / latency.
 */
import type { HsmConfig } from '../config/schema';

/** KMS's request rate to one external key store (XKS specification). */
export const KMS_RATE_PER_KEY_STORE = 1800;

/** libuv's default pool size: kept on top of the HSM calls for Node's own work (fs, dns, crypto). */
export const UV_DEFAULT_THREADS = 4;

/** The libuv thread pool this HSM configuration needs: a thread per session in async mode. */
export function threadPoolSizeFor(hsm: Pick<HsmConfig, 'callMode' | 'pool'>): number {
  return hsm.callMode === 'async' ? hsm.pool.size + UV_DEFAULT_THREADS : UV_DEFAULT_THREADS;
}

/** HSM calls that can run at the same time in one process. */
export function callConcurrency(hsm: Pick<HsmConfig, 'callMode' | 'pool'>, uvThreads: number): number {
  return hsm.callMode === 'async' ? Math.max(1, Math.min(hsm.pool.size, uvThreads)) : 1;
}

/** Calls per second that concurrency x latency allows (Infinity when no latency is known yet). */
export function capacityPerSecond(concurrency: number, latencyMs: number | undefined): number {
  return latencyMs === undefined || latencyMs <= 0 ? Infinity : (concurrency * 1000) / latencyMs;
}

/** The size libuv's pool has in this process (UV_THREADPOOL_SIZE as libuv reads it: 1-1024, else 4). */
export function effectiveUvThreads(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number.parseInt(env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isFinite(n) && n > 0 ? Math.min(n, 1024) : UV_DEFAULT_THREADS;
}
