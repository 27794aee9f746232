/**
 * Load shedding: beyond capacity, answer 429 ThrottlingException at once instead of letting
 * every request's latency run past KMS's 250 ms budget (KMS then fails them all). Two signals:
 *  - event-loop lag: how late a periodic timer fires; a saturated proxy cannot start new work in
 *    time, so new requests are refused before any SigV4 or HSM work is spent on them;
 *  - requests in flight: bounded, for slow (network) HSMs where work queues up asynchronously.
 */
export interface OverloadOptions {
  maxEventLoopLagMs: number;
  maxInFlight: number;
  sampleIntervalMs?: number;
}

export class OverloadGuard {
  private inFlight = 0;
  private lagMs = 0;
  /** Fault injection: a lag the sampler does not overwrite (see setLagForTest). */
  private injectedLagMs = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: OverloadOptions) {}

  start(): void {
    const interval = this.o.sampleIntervalMs ?? 10;
    let expected = performance.now() + interval;
    const recent = [0, 0, 0];
    let i = 0;
    this.timer = setInterval(() => {
      const t = performance.now();
      recent[i++ % recent.length] = Math.max(0, t - expected);
      // Sustained lag only: the smallest of the last three samples, so that one GC pause or a
      // noisy neighbour does not turn into 429s for KMS.
      this.lagMs = Math.min(...recent);
      expected = t + interval;
    }, interval);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Why a new request must be shed now, or undefined when it may proceed. */
  shedReason(): string | undefined {
    if (this.inFlight >= this.o.maxInFlight) return `${this.inFlight} requests in flight (max ${this.o.maxInFlight})`;
    const lag = Math.max(this.lagMs, this.injectedLagMs);
    if (lag > this.o.maxEventLoopLagMs) return `event loop ${Math.round(lag)} ms late (max ${this.o.maxEventLoopLagMs})`;
    return undefined;
  }

  enter(): void {
    this.inFlight++;
  }

  leave(): void {
    this.inFlight--;
  }

  /** For tests and metrics. */
  state(): { inFlight: number; lagMs: number } {
    return { inFlight: this.inFlight, lagMs: Math.max(this.lagMs, this.injectedLagMs) };
  }

  /**
   * Test hook: pretend the event loop is this late until called again with 0. Kept apart from the
   * sampled value, which the 10 ms timer would otherwise overwrite before the test's request lands.
   */
  setLagForTest(ms: number): void {
    this.injectedLagMs = ms;
  }
}
