import { expect } from 'chai';
import { OverloadGuard } from '../../../src/http/overload';
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

  it('sheds while the event loop is late, and recovers', () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100 });
    g.setLagForTest(80);
    expect(g.shedReason()).to.match(/event loop 80 ms late/);
    g.setLagForTest(3);
    expect(g.shedReason()).to.equal(undefined);
  });

  it('ignores a single stall (one GC pause is not overload)', async () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5 });
    g.start();
    try {
      await new Promise((r) => setTimeout(r, 6));
      const until = performance.now() + 120;
      while (performance.now() < until) {
        /* one long stall */
      }
      await new Promise((r) => setTimeout(r, 0));
      expect(g.shedReason()).to.equal(undefined);
    } finally {
      g.stop();
    }
  });

  it('measures sustained event-loop lag', async () => {
    const g = new OverloadGuard({ maxEventLoopLagMs: 50, maxInFlight: 100, sampleIntervalMs: 5 });
    g.start();
    try {
      // A saturated loop: three samples in a row, each delayed by 80 ms of synchronous work.
      for (let n = 0; n < 3; n++) {
        await new Promise((r) => setTimeout(r, 1));
        const until = performance.now() + 80;
        while (performance.now() < until) {
          /* busy */
        }
      }
      await new Promise((r) => setTimeout(r, 0));
      expect(g.state().lagMs).to.be.greaterThan(50);
      expect(g.shedReason()).to.match(/event loop/);
    } finally {
      g.stop();
    }
  });
});
