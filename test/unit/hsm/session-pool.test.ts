import { expect } from 'chai';
import { XksError } from '../../../src/errors/xks-error';
import { SessionPool, type Lease } from '../../../src/hsm/session-pool';

/** A fake resource factory that records what the pool does with it. */
function fakeFactory() {
  let next = 0;
  const created: number[] = [];
  const destroyed: number[] = [];
  return {
    created,
    destroyed,
    create: () => {
      const r = ++next;
      created.push(r);
      return r;
    },
    destroy: (r: number) => {
      destroyed.push(r);
    },
  };
}

function pool(size: number, acquireTimeoutMs = 1000, f = fakeFactory()) {
  return { f, pool: new SessionPool<number>({ size, acquireTimeoutMs, create: f.create, destroy: f.destroy }) };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

/**
 * Records the timers set while it is installed: each one must end up cleared or fired, else it
 * would keep the process alive. (Counting process.getActiveResourcesInfo() is unreliable under
 * mocha, which runs timers of its own.)
 */
function trackTimers() {
  const realSet = global.setTimeout;
  const realClear = global.clearTimeout;
  const pending = new Set<unknown>();
  let created = 0;
  const patchedSet = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    created++;
    const t = realSet(
      (...a: unknown[]) => {
        pending.delete(t);
        fn(...a);
      },
      ms,
      ...args,
    );
    pending.add(t);
    return t;
  }) as unknown as typeof setTimeout;
  const patchedClear = ((t: NodeJS.Timeout | undefined) => {
    pending.delete(t);
    realClear(t);
  }) as typeof clearTimeout;
  global.setTimeout = patchedSet;
  global.clearTimeout = patchedClear;
  return {
    created: () => created,
    pending: () => pending.size,
    restore: () => {
      global.setTimeout = realSet;
      global.clearTimeout = realClear;
    },
  };
}

describe('SessionPool', () => {
  it('creates resources lazily, only when acquired', async () => {
    const { f, pool: p } = pool(3);
    expect(p.stats()).to.deep.equal({ size: 0, inUse: 0, waiters: 0 });
    const a = await p.acquire();
    expect(f.created).to.deep.equal([1]);
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 1, waiters: 0 });
    p.release(a);
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 0, waiters: 0 });
    const b = await p.acquire();
    expect(b.resource).to.equal(1, 'an idle resource is reused, not a new one created');
    expect(f.created).to.deep.equal([1]);
    p.release(b);
    await p.drain();
  });

  it('never creates more than size resources', async () => {
    const { f, pool: p } = pool(2, 5000);
    const a = await p.acquire();
    const b = await p.acquire();
    const third = p.acquire();
    expect(p.stats()).to.deep.equal({ size: 2, inUse: 2, waiters: 1 });
    expect(f.created).to.have.length(2);
    p.release(a);
    const c = await third;
    expect(c.resource).to.equal(a.resource, 'the waiter gets the released resource');
    expect(f.created).to.have.length(2);
    p.release(b);
    p.release(c);
    await p.drain();
  });

  it('serves waiters first-in first-out', async () => {
    const { pool: p } = pool(1, 5000);
    const held = await p.acquire();
    const order: string[] = [];
    const waits = ['w1', 'w2', 'w3'].map((name) =>
      p.acquire().then((lease) => {
        order.push(name);
        // Give it back on the next tick so that the following waiter is served by a release.
        setImmediate(() => p.release(lease));
      }),
    );
    expect(p.stats().waiters).to.equal(3);
    p.release(held);
    await Promise.all(waits);
    expect(order).to.deep.equal(['w1', 'w2', 'w3']);
    await p.drain();
  });

  it('a new caller queues behind existing waiters instead of jumping the queue', async () => {
    const { pool: p } = pool(1, 5000);
    const held = await p.acquire();
    const order: string[] = [];
    const first = p.acquire().then((l) => {
      order.push('first');
      p.release(l);
    });
    p.release(held);
    // `held` went straight to `first`; this caller must not get it before `first` runs.
    const second = p.acquire().then((l) => {
      order.push('second');
      p.release(l);
    });
    await Promise.all([first, second]);
    expect(order).to.deep.equal(['first', 'second']);
    await p.drain();
  });

  it('rejects with DependencyTimeoutException when no resource frees up in time', async () => {
    const { pool: p } = pool(1, 20);
    const held = await p.acquire();
    const t0 = Date.now();
    const err = await rejection(p.acquire());
    expect(Date.now() - t0).to.be.at.least(15);
    expect(err).to.be.instanceOf(XksError);
    expect((err as XksError).errorName).to.equal('DependencyTimeoutException');
    expect((err as XksError).status).to.equal(503);
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 1, waiters: 0 });
    p.release(held);
    await p.drain();
  });

  it('clears the waiter timer when the waiter is served, directly or by a new resource', async () => {
    const timers = trackTimers();
    try {
      const { pool: p } = pool(1, 60000);
      const held = await p.acquire();
      const waiting = p.acquire();
      expect(timers.pending()).to.equal(1);
      p.release(held);
      const lease = await waiting;
      expect(timers.pending()).to.equal(0, 'a served waiter must not leave its 60 s timer running');
      const waiting2 = p.acquire();
      p.release(lease, { drop: true });
      p.release(await waiting2);
      expect(timers.created()).to.equal(2);
      expect(timers.pending()).to.equal(0);
      await p.drain();
    } finally {
      timers.restore();
    }
  });

  it('release with drop destroys the resource and frees its place', async () => {
    const { f, pool: p } = pool(1, 5000);
    const a = await p.acquire();
    const waiting = p.acquire();
    p.release(a, { drop: true });
    expect(f.destroyed).to.deep.equal([1]);
    const b = await waiting;
    expect(b.resource).to.equal(2, 'the waiter gets a newly created resource');
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 1, waiters: 0 });
    p.release(b, { drop: true });
    expect(p.stats()).to.deep.equal({ size: 0, inUse: 0, waiters: 0 });
    await p.drain();
  });

  it('ignores a second release of the same lease', async () => {
    const { f, pool: p } = pool(2);
    const a = await p.acquire();
    p.release(a);
    p.release(a);
    p.release(a, { drop: true });
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 0, waiters: 0 });
    expect(f.destroyed).to.deep.equal([]);
    await p.drain();
  });

  it('passes a factory failure to the caller and frees the place', async () => {
    let fail = true;
    const destroyed: number[] = [];
    const p = new SessionPool<number>({
      size: 1,
      acquireTimeoutMs: 1000,
      create: () => {
        if (fail) throw new Error('factory down');
        return 7;
      },
      destroy: (r) => {
        destroyed.push(r);
      },
    });
    const err = await rejection(p.acquire());
    expect((err as Error).message).to.equal('factory down');
    expect(p.stats()).to.deep.equal({ size: 0, inUse: 0, waiters: 0 });
    fail = false;
    const lease = await p.acquire();
    expect(lease.resource).to.equal(7);
    p.release(lease);
    await p.drain();
    expect(destroyed).to.deep.equal([7]);
  });

  it('supports an async factory', async () => {
    const p = new SessionPool<string>({ size: 1, acquireTimeoutMs: 1000, create: async () => 'async', destroy: () => undefined });
    const lease = await p.acquire();
    expect(lease.resource).to.equal('async');
    p.release(lease);
    await p.drain();
  });

  it('discardIdle destroys idle resources only', async () => {
    const { f, pool: p } = pool(3);
    const leases = [await p.acquire(), await p.acquire(), await p.acquire()];
    p.release(leases[0]!);
    p.release(leases[1]!);
    expect(p.discardIdle()).to.equal(2);
    expect(f.destroyed.sort()).to.deep.equal([1, 2]);
    expect(p.stats()).to.deep.equal({ size: 1, inUse: 1, waiters: 0 });
    p.release(leases[2]!);
    await p.drain();
  });

  it('drain destroys idle resources, rejects waiters, waits for leases and refuses new callers', async () => {
    const timers = trackTimers();
    let waitErr: unknown;
    const { f, pool: p } = pool(2, 60000);
    const a = await p.acquire();
    const b = await p.acquire();
    p.release(b);
    const c = await p.acquire(); // b again
    let drained = false;
    let draining: Promise<void>;
    try {
      const waiting = rejection(p.acquire());
      draining = p.drain().then(() => {
        drained = true;
      });
      waitErr = await waiting;
      expect(timers.created()).to.equal(1);
      expect(timers.pending()).to.equal(0, 'the rejected waiter left no timer');
    } finally {
      timers.restore();
    }
    expect(waitErr).to.be.instanceOf(XksError);
    expect((waitErr as XksError).errorName).to.equal('InternalException');
    await Promise.resolve();
    expect(drained).to.equal(false, 'drain waits for the two leases');
    p.release(a);
    expect(f.destroyed).to.deep.equal([1], 'a lease returned after drain is destroyed');
    p.release(c);
    await draining;
    expect(drained).to.equal(true);
    expect(f.destroyed.sort()).to.deep.equal([1, 2]);
    expect(p.stats()).to.deep.equal({ size: 0, inUse: 0, waiters: 0 });
    const late = await rejection(p.acquire());
    expect((late as XksError).errorName).to.equal('InternalException');
  });

  it('drain on an idle pool resolves at once', async () => {
    const { f, pool: p } = pool(2);
    const leases: Lease<number>[] = [await p.acquire(), await p.acquire()];
    leases.forEach((l) => p.release(l));
    await p.drain();
    expect(f.destroyed.sort()).to.deep.equal([1, 2]);
  });

  it('swallows destroy errors', async () => {
    const p = new SessionPool<number>({
      size: 1,
      acquireTimeoutMs: 1000,
      create: () => 1,
      destroy: () => {
        throw new Error('already broken');
      },
    });
    const a = await p.acquire();
    expect(() => p.release(a, { drop: true })).not.to.throw();
    expect(p.stats().size).to.equal(0);
    await p.drain();
  });

  it('refuses a size below 1', () => {
    expect(() => new SessionPool<number>({ size: 0, acquireTimeoutMs: 10, create: () => 1, destroy: () => undefined })).to.throw(/size/);
  });
});
