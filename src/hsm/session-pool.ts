/**
 * A bounded pool of resources (PKCS#11 sessions in production, anything in the unit tests):
 * design.md "HSM discipline" - bounded pool, acquire timeout -> DependencyTimeoutException.
 *
 * - Resources are created lazily by the factory, never more than `size` at once (idle + in use +
 *   being created).
 * - acquire() is served FIFO. A caller that cannot be served within acquireTimeoutMs is rejected
 *   with DependencyTimeoutException (spec: the proxy timed out waiting for the key manager).
 * - release(lease, { drop: true }) destroys the resource instead of returning it, freeing its place.
 * - Every waiter's timer is cleared when it is served, times out or the pool is drained: no timer
 *   outlives the promise it belongs to, so a process (or a mocha run) can exit.
 */
import { XksError } from '../errors/xks-error';

export interface PoolOptions<T> {
  /** Maximum number of resources alive at once (>= 1). */
  size: number;
  /** How long acquire() waits for a free resource before DependencyTimeoutException. */
  acquireTimeoutMs: number;
  /** Creates a resource. May throw/reject: the error goes to the caller of acquire(). */
  create: () => T | Promise<T>;
  /** Destroys a resource. Errors are swallowed: a resource being dropped is usually broken already. */
  destroy: (resource: T) => void | Promise<void>;
}

export interface Lease<T> {
  readonly resource: T;
}

export interface PoolStatsSnapshot {
  /** Resources currently alive (idle + in use + being created); never above the configured size. */
  size: number;
  /** Resources currently leased (or being created for a caller). */
  inUse: number;
  /** Callers queued in acquire(). */
  waiters: number;
}

class LeaseImpl<T> implements Lease<T> {
  released = false;
  constructor(readonly resource: T) {}
}

interface Waiter<T> {
  resolve: (lease: Lease<T>) => void;
  reject: (err: unknown) => void;
  timer: NodeJS.Timeout;
}

export class SessionPool<T> {
  readonly maxSize: number;
  private readonly acquireTimeoutMs: number;
  private readonly createFn: () => T | Promise<T>;
  private readonly destroyFn: (resource: T) => void | Promise<void>;

  private readonly idle: T[] = [];
  private readonly waiters: Waiter<T>[] = [];
  /** Leased resources plus creations in progress. */
  private busy = 0;
  private closed = false;
  private drainWaiters: (() => void)[] = [];

  constructor(opts: PoolOptions<T>) {
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new Error('pool size must be an integer >= 1');
    if (!(opts.acquireTimeoutMs > 0)) throw new Error('acquireTimeoutMs must be > 0');
    this.maxSize = opts.size;
    this.acquireTimeoutMs = opts.acquireTimeoutMs;
    this.createFn = opts.create;
    this.destroyFn = opts.destroy;
  }

  acquire(): Promise<Lease<T>> {
    if (this.closed) return Promise.reject(closedError());
    // FIFO: an idle resource or a free place goes to queued callers first.
    if (this.waiters.length === 0) {
      const r = this.idle.pop();
      if (r !== undefined) {
        this.busy++;
        return Promise.resolve(new LeaseImpl(r));
      }
      if (this.alive() < this.maxSize) {
        this.busy++;
        return this.createLeased();
      }
    }
    return new Promise<Lease<T>>((resolve, reject) => {
      const waiter: Waiter<T> = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(
            new XksError(
              'DependencyTimeoutException',
              undefined,
              `no HSM session free within ${this.acquireTimeoutMs} ms (pool size ${this.maxSize})`,
            ),
          );
        }, this.acquireTimeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /**
   * Gives a leased resource back. With drop, the resource is destroyed and its place freed (the
   * next caller gets a new one). Releasing the same lease twice does nothing.
   */
  release(lease: Lease<T>, opts: { drop?: boolean } = {}): void {
    if (!(lease instanceof LeaseImpl) || lease.released) return;
    lease.released = true;
    if (opts.drop || this.closed) {
      this.busy--;
      this.destroyQuietly(lease.resource);
      this.servePlaces();
    } else {
      const next = this.waiters.shift();
      if (next) {
        // Handed over directly: stays busy.
        clearTimeout(next.timer);
        next.resolve(new LeaseImpl(lease.resource));
      } else {
        this.busy--;
        this.idle.push(lease.resource);
      }
    }
    this.checkDrained();
  }

  /**
   * Destroys every idle resource (those in use are untouched). For when a failure suggests that
   * all of them went bad at once, e.g. every session on the token was closed.
   */
  discardIdle(): number {
    const n = this.idle.length;
    for (const r of this.idle.splice(0)) this.destroyQuietly(r);
    this.servePlaces();
    return n;
  }

  stats(): PoolStatsSnapshot {
    return { size: this.alive(), inUse: this.busy, waiters: this.waiters.length };
  }

  /**
   * Closes the pool: queued callers are rejected, idle resources destroyed, and the promise
   * resolves once every leased resource has come back (and been destroyed). acquire() rejects
   * from now on.
   */
  async drain(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(closedError());
    }
    for (const r of this.idle.splice(0)) this.destroyQuietly(r);
    if (this.busy > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  private alive(): number {
    return this.idle.length + this.busy;
  }

  private async createLeased(): Promise<Lease<T>> {
    let r: T;
    try {
      r = await this.createFn();
    } catch (e) {
      this.busy--;
      // The place is free again: a queued caller may get it (its own creation may succeed).
      this.servePlaces();
      this.checkDrained();
      throw e;
    }
    if (this.closed) {
      this.busy--;
      this.destroyQuietly(r);
      this.checkDrained();
      throw closedError();
    }
    return new LeaseImpl(r);
  }

  /** Gives free places (below maxSize) to queued callers, creating a resource for each. */
  private servePlaces(): void {
    while (!this.closed && this.waiters.length > 0) {
      const r = this.idle.pop();
      if (r !== undefined) {
        const w = this.waiters.shift()!;
        clearTimeout(w.timer);
        this.busy++;
        w.resolve(new LeaseImpl(r));
        continue;
      }
      if (this.alive() >= this.maxSize) return;
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      this.busy++;
      this.createLeased().then(w.resolve, w.reject);
    }
  }

  private destroyQuietly(r: T): void {
    try {
      const p = this.destroyFn(r);
      if (p && typeof (p as Promise<void>).catch === 'function') (p as Promise<void>).catch(() => undefined);
    } catch {
      // A resource being destroyed is often broken already; nothing useful to do with the error.
    }
  }

  private checkDrained(): void {
    if (this.closed && this.busy === 0 && this.drainWaiters.length > 0) {
      for (const resolve of this.drainWaiters.splice(0)) resolve();
    }
  }
}

function closedError(): XksError {
  return new XksError('InternalException', undefined, 'HSM session pool is closed');
}
