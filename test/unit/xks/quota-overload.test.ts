import { expect } from 'chai';
import { OverloadGuard, adaptShare, type AdaptiveState } from '../../../src/http/overload';
import { TokenBucket } from '../../../src/xks/quota';

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
  it('sheds when too many requests are in flight, and recovers', () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 2 });
    g.enter();
    expect(g.shedReason()).to.equal(undefined);
    g.enter();
    expect(g.shedReason()).to.match(/2 requests in flight \(max 2\)/);
    g.leave();
    expect(g.shedReason()).to.equal(undefined);
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

  it('ignores a single stall (one GC pause is not overload)', async () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5 });
    g.start();
    try {
      await new Promise((r) => setTimeout(r, 6));
      const until = performance.now() + 150;
      while (performance.now() < until) {
        /* one long stall, three times the maximum lag */
      }
      await new Promise((r) => setTimeout(r, 6));
      expect(g.state().lagMs).to.be.below(50);
      expect(g.shedReason()).to.equal(undefined);
    } finally {
      g.stop();
    }
  });

  it('measures sustained event-loop lag', async () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5 });
    g.start();
    try {
      // A saturated loop: every turn is 200 ms of synchronous work, so every sample is late.
      await new Promise((r) => setTimeout(r, 6));
      for (let n = 0; n < 10; n++) {
        await new Promise((r) => setImmediate(r));
        const until = performance.now() + 200;
        while (performance.now() < until) {
          /* busy */
        }
      }
      await new Promise((r) => setTimeout(r, 0));
      expect(g.state().lagMs).to.be.greaterThan(150);
      expect(g.shedReason()).to.match(/event loop \d+ ms late/);
    } finally {
      g.stop();
    }
  });
});
