/**
 * hsm.callMode 'async' on a REAL SoftHSM2 token: C_Encrypt and C_Decrypt run on libuv's thread
 * pool (pkcs11js C_EncryptAsync / C_DecryptAsync), so calls on different sessions overlap, as a
 * network HSM whose calls take milliseconds needs. SoftHSM2 answers in microseconds, so to see
 * the overlap the module is wrapped (fault injection, as for the IV modes) to hold each finished
 * async call until the test releases it: a network round trip that the test controls.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../../../src/config/schema';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { buildGcmAad } from '../../../src/xks/aad';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectXks, flip } from '../../helpers/xks-expect';
import { wrappedModule } from '../../helpers/wrapped-module';

const KEY = 'k-call-mode';

/** Holds every finished C_EncryptAsync/C_DecryptAsync result until released; counts module calls. */
class SlowNetworkModule {
  readonly held: (() => void)[] = [];
  readonly calls = new Map<string, number>();
  readonly warnings: Record<string, unknown>[] = [];
  private waiters: { ready: () => boolean; resolve: () => void }[] = [];

  wrap = (real: pkcs11js.PKCS11): pkcs11js.PKCS11 =>
    new Proxy(real, {
      get: (target, prop, receiver) => {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof prop !== 'string' || typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          this.calls.set(prop, (this.calls.get(prop) ?? 0) + 1);
          const r = (v as (...a: unknown[]) => unknown).apply(target, args);
          if (prop !== 'C_EncryptAsync' && prop !== 'C_DecryptAsync') return r;
          return (r as Promise<Buffer>).then(
            (out) =>
              new Promise<Buffer>((resolve) => {
                this.held.push(() => resolve(out));
                this.notify();
              }),
          );
        };
      },
    });

  /** Resolves once `n` calls are held. */
  heldCount(n: number): Promise<void> {
    return this.until(() => this.held.length >= n);
  }

  /** Resolves once `ready()` holds, checked whenever a call is held or a warning logged. */
  until(ready: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      this.waiters.push({ ready, resolve });
      this.notify();
    });
  }

  check(): void {
    this.notify();
  }

  releaseAll(): void {
    for (const release of this.held.splice(0)) release();
  }

  count(fn: string): number {
    return this.calls.get(fn) ?? 0;
  }

  private notify(): void {
    this.waiters = this.waiters.filter((w) => (w.ready() ? (w.resolve(), false) : true));
  }
}

describe("hsm.callMode 'async' (real SoftHSM2; network latency emulated)", function () {
  this.timeout(60000);
  let tk: TestToken;
  const opened: Pkcs11Backend[] = [];
  const aad = buildGcmAad(randomBytes(100), undefined);

  async function open(callMode: HsmConfig['callMode'], wrap?: SlowNetworkModule, poolSize = 4): Promise<Pkcs11Backend> {
    const log = createSilentLogger();
    if (wrap) {
      // The backend's warnings reach the wrapper at once (what it decided after a failed call).
      const warn = log.warn.bind(log);
      log.warn = ((msg: string, meta?: Record<string, unknown>) => {
        wrap.warnings.push({ msg, ...meta });
        wrap.check();
        return warn(msg, meta);
      }) as typeof log.warn;
    }
    // The held calls must not run into the per-call deadline (tested in call-deadline.test.ts).
    const b = await openPkcs11Backend({ ...tk.hsmConfig, callMode, callTimeoutMs: 60000, pool: { size: poolSize, acquireTimeoutMs: 5000 } }, tk.pin, log, wrap ? wrappedModule(wrap.wrap) : undefined);
    opened.push(b);
    return b;
  }

  before(async () => {
    tk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: KEY, usage: 'encrypt-decrypt' });
  });

  after(async () => {
    for (const b of opened) await b.close();
    tk?.cleanup();
  });

  it('round-trips through the thread pool, interoperates with sync mode, and refuses tampering', async () => {
    const asyncB = await open('async');
    const syncB = await open('sync');
    const pt = randomBytes(4300);
    const enc = await asyncB.encrypt(KEY, pt, aad);
    expect(enc.iv).to.have.length(12);
    expect((await syncB.decrypt(KEY, enc.ciphertext, enc.iv, enc.tag, aad)).equals(pt)).to.equal(true);
    const enc2 = await syncB.encrypt(KEY, pt, aad);
    expect((await asyncB.decrypt(KEY, enc2.ciphertext, enc2.iv, enc2.tag, aad)).equals(pt)).to.equal(true);
    await expectXks(asyncB.decrypt(KEY, enc.ciphertext, enc.iv, flip(enc.tag), aad), 'InvalidCiphertextException');
    // The failed call gave its session back and the next one works.
    expect(asyncB.poolStats().inUse).to.equal(0);
    expect((await asyncB.decrypt(KEY, enc.ciphertext, enc.iv, enc.tag, aad)).equals(pt)).to.equal(true);
  });

  it('keeps one call per session in flight at once, up to the pool size, and serves meanwhile', async () => {
    const net = new SlowNetworkModule();
    const b = await open('async', net, 4);
    const pts = Array.from({ length: 6 }, () => randomBytes(32));
    const pending = pts.map((pt) => b.encrypt(KEY, pt, aad));
    await net.heldCount(4);
    // Four round trips in flight on four sessions (and this test running meanwhile: the event
    // loop is free while the HSM works); the other two calls wait for a session.
    expect(b.poolStats()).to.include({ inUse: 4, waiters: 2 });
    net.releaseAll();
    await net.heldCount(2);
    net.releaseAll();
    const results = await Promise.all(pending);
    const plain = await open('sync');
    for (let i = 0; i < pts.length; i++) {
      const r = results[i]!;
      expect((await plain.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pts[i]!)).to.equal(true);
    }
    expect(new Set(results.map((r) => r.iv.toString('hex'))).size).to.equal(pts.length);
    expect(b.poolStats().inUse).to.equal(0);
  });

  it('re-initialises the module only once the calls on the thread pool have settled', async () => {
    const net = new SlowNetworkModule();
    const b = await open('async', net, 4);
    const pt = randomBytes(32);
    const inFlight = [b.encrypt(KEY, pt, aad), b.encrypt(KEY, pt, aad)];
    await net.heldCount(2);
    // The module is finalised under the backend (as a crashed HSM client would leave it).
    const other = new pkcs11js.PKCS11();
    other.load(tk.module);
    other.C_Finalize();
    other.close();
    const third = b.encrypt(KEY, pt, aad);
    // The third call fails with CKR_CRYPTOKI_NOT_INITIALIZED and decides to re-initialise the
    // module, but must not while two calls are still on the thread pool.
    await net.until(() => net.warnings.some((w) => w.action === 'reinit'));
    expect(net.count('C_Finalize') + net.count('C_Initialize')).to.equal(0);
    net.releaseAll();
    await Promise.allSettled(inFlight);
    await net.heldCount(1); // the third call, retried after the re-initialisation
    expect(net.count('C_Initialize')).to.equal(1);
    net.releaseAll();
    const r = await third;
    const plain = await open('sync');
    expect((await plain.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
  });
});
