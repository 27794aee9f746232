import { expect } from 'chai';
import { OverloadGuard, adaptShare, type AdaptiveState, type LoopClock } from '../../../src/http/overload';
import { TokenBucket } from '../../../src/util/token-bucket';

/**
 * A manual event loop for the lag sampler: time moves only when the test says so. run() lets
 * periodic timers fire on time; block() keeps the loop busy (nothing fires), after which every
 * overdue timer fires once, late, and is rescheduled from then on, as Node's setInterval does.
 */
class ManualLoop implements LoopClock {
  t = 0;
  private timers: { interval: number; due: number; fn: () => void; live: boolean }[] = [];

  now(): number {
    return this.t;
  }

  every(intervalMs: number, fn: () => void): () => void {
    const timer = { interval: intervalMs, due: this.t + intervalMs, fn, live: true };
    this.timers.push(timer);
    return () => {
      timer.live = false;
    };
  }

  /** An idle loop for ms: each timer fires when due. */
  run(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const next = this.live().filter((x) => x.due <= end).sort((a, b) => a.due - b.due)[0];
      if (!next) break;
      this.t = next.due;
      this.fire(next);
    }
    this.t = end;
  }

  /** Synchronous work for ms, then the overdue timers fire (late). */
  block(ms: number): void {
    this.t += ms;
    for (const x of this.live().filter((x) => x.due <= this.t)) this.fire(x);
  }

  private live() {
    return this.timers.filter((x) => x.live);
  }

  private fire(x: { interval: number; due: number; fn: () => void }): void {
    x.fn();
    x.due = this.t + x.interval;
  }
}

describe('TokenBucket (per-key-store quota)', () => {
  it('allows the burst, refuses beyond it, and refills at the rate', () => {
    let t = 0;
    const b = new TokenBucket(10, 3, () => t);
    expect([b.take(), b.take(), b.take(), b.take()]).to.deep.equal([true, true, true, false]);
    t += 100; // 10 per second: one token per 100 ms
    expect([b.take(), b.take()]).to.deep.equal([true, false]);
    t += 10_000; // never more than the burst
    expect([b.take(), b.take(), b.take(), b.take()]).to.deep.equal([true, true, true, false]);
  });
});

describe('OverloadGuard (load shedding)', () => {
  it('bounds authenticated requests in flight, and recovers', () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 2 });
    expect(g.tryEnter()).to.equal(undefined);
    expect(g.tryEnter()).to.equal(undefined);
    expect(g.tryEnter()).to.match(/2 authenticated requests in flight \(max 2\)/);
    expect(g.state().inFlight).to.equal(2);
    // The in-flight bound is not a lag: the cheap pre-SigV4 check does not refuse for it.
    expect(g.shedReason()).to.equal(undefined);
    g.leave();
    expect(g.tryEnter()).to.equal(undefined);
  });

  it('sheds a share of requests that grows with the lag: none up to the maximum, all from three times it', () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100 });
    const shedOutOf = (n: number) => Array.from({ length: n }, () => g.shedReason()).filter((r) => r !== undefined).length;
    g.setLagForTest(50);
    expect(shedOutOf(100)).to.equal(0);
    g.setLagForTest(100); // half-way between 50 and 150
    expect(g.state().shedShare).to.equal(0.5);
    expect(shedOutOf(100)).to.equal(50);
    g.setLagForTest(150);
    expect(shedOutOf(100)).to.equal(100);
    expect(g.shedReason()).to.match(/overloaded \(event loop 150 ms late, max 50\): shedding 100% of requests/);
    g.setLagForTest(3);
    expect(shedOutOf(100)).to.equal(0);
  });

  it('once overloaded, raises its own share until the lag is under half the maximum, then lowers it to the end of the overload', () => {
    let s: AdaptiveState = { overloaded: false, share: 0 };
    const step = (lag: number) => (s = adaptShare(s, lag, 50));
    step(40); // late, but not overloaded: a saturated closed loop is served, not shed
    expect(s).to.deep.equal({ overloaded: false, share: 0 });
    step(60);
    expect(s.overloaded).to.equal(true);
    for (let i = 0; i < 5; i++) step(30); // still more than half the maximum: clients are queueing
    expect(s.share).to.be.closeTo(0.6, 1e-9);
    for (let i = 0; i < 20; i++) step(100);
    expect(s.share).to.equal(1);
    step(10); // caught up: release slowly
    expect(s.share).to.be.closeTo(0.95, 1e-9);
    expect(s.overloaded).to.equal(true);
    for (let i = 0; i < 30; i++) step(10);
    expect(s).to.deep.equal({ overloaded: false, share: 0 });
  });

  it('spreads the shed requests evenly instead of refusing a run of them', () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100 });
    g.setLagForTest(75); // a quarter
    const pattern = Array.from({ length: 8 }, () => (g.shedReason() ? 'x' : '.')).join('');
    expect(pattern).to.equal('...x...x');
  });

  it('ignores a single stall (one GC pause is not overload)', () => {
    const loop = new ManualLoop();
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5, clock: loop });
    g.start();
    loop.run(20);
    loop.block(150); // one long stall, three times the maximum lag
    // The sample due at 25 ms fires at 170 ms, 145 ms late, and moves the average by a fifth.
    expect(g.state().lagMs).to.be.closeTo(0.2 * 145, 1e-9);
    loop.run(20);
    expect(g.state().lagMs).to.be.below(50);
    expect(g.shedReason()).to.equal(undefined);
    loop.run(200); // the adapter saw no overload either
    expect(g.state().shedShare).to.equal(0);
    g.stop();
  });

  it('measures sustained event-loop lag, and sheds for it', () => {
    const loop = new ManualLoop();
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5, clock: loop });
    g.start();
    loop.run(20);
    // A saturated loop: every turn is 200 ms of synchronous work, so every sample is late.
    for (let n = 0; n < 10; n++) loop.block(200);
    expect(g.state().lagMs).to.be.greaterThan(150);
    expect(g.shedReason()).to.match(/event loop \d+ ms late/);
    g.stop();
  });

  it('stops sampling once stopped', () => {
    const loop = new ManualLoop();
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5, clock: loop });
    g.start();
    g.stop();
    for (let n = 0; n < 10; n++) loop.block(200);
    expect(g.state().lagMs).to.equal(0);
  });
});
