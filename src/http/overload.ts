/**
 * Load shedding: beyond capacity, answer 429 ThrottlingException at once (spec: the proxy "is
 * unable to keep up") instead of letting every request's latency run past KMS's 250 ms budget
 * (KMS then fails them all). Two signals:
 *  - event-loop lag: how late a periodic timer fires. A saturated proxy cannot start new work in
 *    time. The lag is smoothed (exponential average), so that one GC pause or a noisy neighbour
 *    does not turn into 429s, and shedding is proportional: none up to maxEventLoopLagMs, then a
 *    growing share of new requests, all of them from 3 x maxEventLoopLagMs. A share, not an
 *    on/off switch: at twice capacity the proxy must answer more requests per second than it can
 *    serve, which it can only do by refusing most of them cheaply (a 429 costs about a third of a
 *    served Encrypt). An on/off switch served too many and let a queue build in the clients;
 *  - requests in flight: bounded, for slow (network) HSMs where work queues up asynchronously.
 * Shed requests are refused before any SigV4 or HSM work is spent on them.
 */
export interface OverloadOptions {
  maxEventLoopLagMs: number;
  maxInFlight: number;
  sampleIntervalMs?: number;
}

/** Weight of a new lag sample in the average: a single 120 ms stall moves it by 24 ms. */
const LAG_SMOOTHING = 0.2;

export class OverloadGuard {
  private inFlight = 0;
  private lagMs = 0;
  /** Fault injection: a lag the sampler does not overwrite (see setLagForTest). */
  private injectedLagMs = 0;
  /** Error-diffusion accumulator: sheds exactly the computed share, spread evenly. */
  private owed = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: OverloadOptions) {}

  start(): void {
    const interval = this.o.sampleIntervalMs ?? 10;
    let expected = performance.now() + interval;
    this.timer = setInterval(() => {
      const t = performance.now();
      this.lagMs += LAG_SMOOTHING * (Math.max(0, t - expected) - this.lagMs);
      expected = t + interval;
    }, interval);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Share of new requests to refuse now, from 0 to 1. */
  shedShare(): number {
    const lag = this.currentLagMs();
    const from = this.o.maxEventLoopLagMs;
    const all = this.o.maxEventLoopLagMs * 3;
    return Math.min(1, Math.max(0, (lag - from) / (all - from)));
  }

  /** Why a new request must be shed now, or undefined when it may proceed. */
  shedReason(): string | undefined {
    if (this.inFlight >= this.o.maxInFlight) return `${this.inFlight} requests in flight (max ${this.o.maxInFlight})`;
    const share = this.shedShare();
    if (share === 0) {
      this.owed = 0;
      return undefined;
    }
    this.owed += share;
    if (this.owed < 1) return undefined;
    this.owed -= 1;
    return `event loop ${Math.round(this.currentLagMs())} ms late (max ${this.o.maxEventLoopLagMs}): shedding ${Math.round(share * 100)}% of requests`;
  }

  enter(): void {
    this.inFlight++;
  }

  leave(): void {
    this.inFlight--;
  }

  /** For tests and metrics. */
  state(): { inFlight: number; lagMs: number; shedShare: number } {
    return { inFlight: this.inFlight, lagMs: this.currentLagMs(), shedShare: this.shedShare() };
  }

  /**
   * Test hook: pretend the event loop is this late until called again with 0. Kept apart from the
   * sampled value, which the 10 ms timer would otherwise overwrite before the test's request lands.
   */
  setLagForTest(ms: number): void {
    this.injectedLagMs = ms;
  }

  private currentLagMs(): number {
    return Math.max(this.lagMs, this.injectedLagMs);
  }
}
