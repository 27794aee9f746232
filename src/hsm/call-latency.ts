/**
 * The measured time of the HSM's own calls (C_Encrypt and C_Decrypt: the network round trip on a
 * network HSM), apart from the session wait that xks_hsm_operation_duration_seconds includes, and
 * what it means for the rate the HSM link can carry (capacity.ts). In hsm.callMode 'async' the
 * time runs from handing the call to libuv's thread pool to its result, so a wait for a pool
 * thread counts (serve sizes the pool so that there is none: src/runtime/thread-pool-size.ts).
 *
 * The proxy warns when that rate is below KMS's 1800 requests per second to a key store: KMS
 * would then see throttling or timeouts at its full rate. Checked after the first 64 calls and
 * then every 4096, warned at most every 10 minutes.
 */
import type { HsmConfig } from '../config/schema';
import type { AppLogger } from '../log/logger';
import { KMS_RATE_PER_KEY_STORE, callConcurrency, capacityPerSecond, effectiveUvThreads } from './capacity';

export interface HsmCallStats {
  /** C_Encrypt/C_Decrypt calls timed since start. */
  calls: number;
  /** Median of the last 256 calls, in ms (undefined before the first). */
  recentMs: number | undefined;
  /** Calls that can run at the same time in this process. */
  concurrency: number;
  /** concurrency x 1000 / recentMs: the calls per second the HSM link allows (Infinity: not known yet). */
  capacityPerSecond: number;
}

const WINDOW = 256;
const FIRST_CHECK = 64;
const CHECK_EVERY = 4096;
const WARN_EVERY_MS = 10 * 60_000;

export class HsmCallLatency {
  private readonly samples = new Float64Array(WINDOW);
  private n = 0;
  private lastWarnMs = -Infinity;

  constructor(
    private readonly cfg: Pick<HsmConfig, 'callMode' | 'pool'>,
    private readonly log: AppLogger,
    private readonly uvThreads = effectiveUvThreads(),
    private readonly now: () => number = Date.now,
  ) {}

  record(ms: number): void {
    this.samples[this.n % WINDOW] = ms;
    this.n++;
    if (this.n === FIRST_CHECK || this.n % CHECK_EVERY === 0) this.check();
  }

  stats(): HsmCallStats {
    const count = Math.min(this.n, WINDOW);
    let recentMs: number | undefined;
    if (count > 0) {
      const sorted = this.samples.slice(0, count).sort();
      recentMs = sorted[Math.floor(count / 2)]!;
    }
    const concurrency = callConcurrency(this.cfg, this.uvThreads);
    return { calls: this.n, recentMs, concurrency, capacityPerSecond: capacityPerSecond(concurrency, recentMs) };
  }

  private check(): void {
    const s = this.stats();
    if (s.capacityPerSecond >= KMS_RATE_PER_KEY_STORE || this.now() - this.lastWarnMs < WARN_EVERY_MS) return;
    this.lastWarnMs = this.now();
    this.log.warn(
      `at the measured HSM call time the HSM link carries about ${Math.floor(s.capacityPerSecond)} calls per second per process, under KMS's ${KMS_RATE_PER_KEY_STORE} per key store: ` +
        (this.cfg.callMode === 'sync' ? 'set hsm.callMode: async' : 'raise hsm.pool.size (and the HSM\'s session limit), or run more workers or instances'),
      { hsmCallMs: Math.round(s.recentMs! * 1000) / 1000, concurrentCalls: s.concurrency, callMode: this.cfg.callMode, poolSize: this.cfg.pool.size, UV_THREADPOOL_SIZE: this.uvThreads },
    );
  }
}
