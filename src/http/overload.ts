/**
 * Load shedding: beyond capacity, answer 429 ThrottlingException at once (spec: the proxy "is
 * unable to keep up") instead of letting every request's latency run past KMS's 250 ms budget
 * (KMS then fails them all). Shed requests are refused before any SigV4 or HSM work.
 *
 * Signals:
 *  - event-loop lag (how late a periodic timer fires), smoothed so that one GC pause or a noisy
 *    neighbour does not turn into 429s. Up to maxEventLoopLagMs nothing is shed: a client that
 *    keeps many requests in flight (a closed loop at saturation) is not an overload. Beyond it a
 *    share of new requests grows with the lag, to all of them at 3 x maxEventLoopLagMs;
 *  - once overloaded, an adaptive share on top: a refusal is not free (TLS, HTTP parsing and the
 *    socket write cost about half a served Encrypt here), so at twice capacity the proxy keeps up
 *    only by refusing most requests, and the lag alone does not say how many: clients with a
 *    fixed set of connections queue the excess on their side, out of the proxy's sight, while the
 *    lag stays at a level the proportional share accepts. So the share keeps rising while the
 *    loop is more than maxEventLoopLagMs / 2 late (every connection still has a request waiting)
 *    and falls back, more slowly, once it is not; the overload ends when it reaches 0;
 *  - requests in flight: bounded, for slow (network) HSMs where work queues up asynchronously.
 *    Only authenticated requests count (tryEnter, once the body is in and the signature checks):
 *    unauthenticated work is bounded apart, in src/http/pre-auth.ts, so that nobody without
 *    credentials can take the capacity KMS needs.
 * The lag-based share is refused before any SigV4 work (shedReason); the shed requests are spread
 * evenly (error diffusion), not refused in runs.
 */
export interface OverloadOptions {
  maxEventLoopLagMs: number;
  maxInFlight: number;
  sampleIntervalMs?: number;
  /** Time and timers; the real ones by default, a manual one in tests. */
  clock?: LoopClock;
}

/** What the lag sampler needs from the runtime, injectable so that a test drives it step by step. */
export interface LoopClock {
  now(): number;
  /** Call fn every intervalMs (late when the loop is busy, which is what is measured); returns a stop function. */
  every(intervalMs: number, fn: () => void): () => void;
}

export const REAL_LOOP_CLOCK: LoopClock = {
  now: () => performance.now(),
  every: (intervalMs, fn) => {
    const t = setInterval(fn, intervalMs);
    t.unref();
    return () => clearInterval(t);
  },
};

/** Weight of a new lag sample in the average: a single 120 ms stall moves it by 24 ms. */
const LAG_SMOOTHING = 0.2;
/** The adaptive share is adjusted this often. */
const ADAPT_INTERVAL_MS = 100;
/** Fast attack, slow release. */
const SHARE_UP = 0.1;
const SHARE_DOWN = 0.05;

function clampShare(x: number): number {
  return Math.min(1, Math.max(0, x));
}

/** The adaptive part of the shedding decision: a pure step function, for the tests. */
export interface AdaptiveState {
  overloaded: boolean;
  share: number;
}

/**
 * Once the lag passes maxLagMs, the share rises while the loop is still more than maxLagMs / 2
 * late and falls while it is less: it settles where the proxy answers as fast as requests come,
 * with a short queue, wherever that queue would otherwise be.
 */
export function adaptShare(s: AdaptiveState, lagMs: number, maxLagMs: number): AdaptiveState {
  const overloaded = s.overloaded || lagMs > maxLagMs;
  if (!overloaded) return { overloaded: false, share: 0 };
  const share = clampShare(s.share + (lagMs > maxLagMs / 2 ? SHARE_UP : -SHARE_DOWN));
  // Over once no request needs refusing and the loop is on time again.
  if (share === 0 && lagMs <= maxLagMs / 2) return { overloaded: false, share: 0 };
  return { overloaded: true, share };
}

export class OverloadGuard {
  private inFlight = 0;
  private lagMs = 0;
  private adaptive: AdaptiveState = { overloaded: false, share: 0 };
  /** Fault injection: a lag the sampler does not overwrite (see setLagForTest). */
  private injectedLagMs = 0;
  /** Error-diffusion accumulator: sheds exactly the computed share, spread evenly. */
  private owed = 0;
  private stops: (() => void)[] = [];
  private readonly clock: LoopClock;

  constructor(private readonly o: OverloadOptions) {
    this.clock = o.clock ?? REAL_LOOP_CLOCK;
  }

  start(): void {
    const clock = this.clock;
    const interval = this.o.sampleIntervalMs ?? 10;
    let expected = clock.now() + interval;
    const stopSampler = clock.every(interval, () => {
      const t = clock.now();
      this.lagMs += LAG_SMOOTHING * (Math.max(0, t - expected) - this.lagMs);
      expected = t + interval;
    });
    const stopAdapter = clock.every(ADAPT_INTERVAL_MS, () => {
      this.adaptive = adaptShare(this.adaptive, this.currentLagMs(), this.o.maxEventLoopLagMs);
    });
    this.stops = [stopSampler, stopAdapter];
  }

  stop(): void {
    for (const stop of this.stops) stop();
    this.stops = [];
  }

  /** Share of new requests to refuse now, from 0 to 1. */
  shedShare(): number {
    const lag = this.currentLagMs();
    const from = this.o.maxEventLoopLagMs;
    const all = this.o.maxEventLoopLagMs * 3;
    const byLag = clampShare((lag - from) / (all - from));
    return Math.max(byLag, this.adaptive.share);
  }

  /**
   * Why a new request must be shed now because the event loop is late, or undefined when it may
   * proceed. Cheap, and asked before SigV4: a refusal must cost less than the work it saves.
   */
  shedReason(): string | undefined {
    const share = this.shedShare();
    if (share === 0) {
      this.owed = 0;
      return undefined;
    }
    this.owed += share;
    if (this.owed < 1) return undefined;
    this.owed -= 1;
    return `overloaded (event loop ${Math.round(this.currentLagMs())} ms late, max ${this.o.maxEventLoopLagMs}): shedding ${Math.round(share * 100)}% of requests`;
  }

  /**
   * Count an authenticated request in flight, or say why not (the bound is full). Every
   * successful tryEnter is paired with one leave().
   */
  tryEnter(): string | undefined {
    if (this.inFlight >= this.o.maxInFlight) return `${this.inFlight} authenticated requests in flight (max ${this.o.maxInFlight})`;
    this.inFlight++;
    return undefined;
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
    // The end of an injected lag also ends what it taught the adaptive share (an adapter tick may
    // have run meanwhile on a slow machine), so that a test sees the guard as it was before.
    if (ms === 0) this.adaptive = { overloaded: false, share: 0 };
  }

  private currentLagMs(): number {
    return Math.max(this.lagMs, this.injectedLagMs);
  }
}
