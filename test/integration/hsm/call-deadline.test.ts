/**
 * hsm.callTimeoutMs (issue 9, item 3) on a REAL SoftHSM2 token in hsm.callMode 'async': a call
 * that the HSM does not answer is raced against the deadline and the request gets
 * DependencyTimeoutException; the late result is discarded, and its session is not handed to
 * anyone else until the call has returned. The fault wrapper (test/helpers/faulty-module.ts) holds
 * the finished C_EncryptAsync/C_DecryptAsync results: an HSM round trip that never ends until the
 * test says so. Nothing here measures time: a held call never returns on its own, and the
 * deadline (2 s) is far above what an unheld SoftHSM2 call takes even on a loaded machine.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { FaultyModule } from '../../helpers/faulty-module';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectXks } from '../../helpers/xks-expect';
import { wrappedModule } from '../../helpers/wrapped-module';

const KEY = 'k-deadline';

describe("hsm.callTimeoutMs: every HSM call has a deadline (async call mode, real SoftHSM2)", function () {
  this.timeout(60000);
  let tk: TestToken;
  let net: FaultyModule;
  let b: Pkcs11Backend;
  const aad = Buffer.from('aad');

  before(async () => {
    tk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: KEY, usage: 'encrypt-decrypt' });
    net = new FaultyModule();
    // One session, so that "not reused" is visible; a pool wait long enough never to be the cause.
    b = await openPkcs11Backend({ ...tk.hsmConfig, callMode: 'async', callTimeoutMs: 2000, pool: { size: 1, acquireTimeoutMs: 30000 } }, tk.pin, createSilentLogger(), wrappedModule(net.wrap));
  });
  after(async () => {
    net?.holdAsync(false);
    net?.releaseHeld();
    await b?.close();
    tk?.cleanup();
  });

  it('a held encrypt answers DependencyTimeoutException while the HSM still has it', async () => {
    net.holdAsync();
    const e = await expectXks(b.encrypt(KEY, Buffer.from('x'), aad), 'DependencyTimeoutException');
    expect(e.detail).to.match(/hsm\.callTimeoutMs \(2000 ms\)/);
    expect(net.heldCount()).to.equal(1, 'the call is still on the HSM');
    expect(b.poolStats().inUse).to.equal(1, 'its session stays leased until the call returns');
    net.holdAsync(false);
    net.releaseHeld();
  });

  it('the session of a timed-out call goes to the next caller only once the call has returned', async () => {
    const pt = randomBytes(32);
    const r = await b.encrypt(KEY, pt, aad);
    net.holdAsync();
    await expectXks(b.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad), 'DependencyTimeoutException');
    net.holdAsync(false);
    // The only session is still with the held call: the next caller waits for it.
    const next = b.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad);
    expect(b.poolStats()).to.include({ inUse: 1, waiters: 1 });
    net.releaseHeld(); // the late plaintext is discarded; the session goes on to `next`
    expect((await next).equals(pt)).to.equal(true);
    expect(b.poolStats()).to.include({ inUse: 0, waiters: 0 });
  });

  it('a request that needs a re-initialisation held up by a call still on the HSM also answers DependencyTimeoutException, and service resumes', async () => {
    const net2 = new FaultyModule();
    const b2 = await openPkcs11Backend({ ...tk.hsmConfig, callMode: 'async', callTimeoutMs: 2000, pool: { size: 2, acquireTimeoutMs: 30000 } }, tk.pin, createSilentLogger(), wrappedModule(net2.wrap));
    try {
      net2.holdAsync();
      const first = expectXks(b2.encrypt(KEY, Buffer.from('held'), aad), 'DependencyTimeoutException');
      await net2.whenHeld(1);
      net2.holdAsync(false);
      // The module is finalised under the backend: the next call must re-initialise it, which
      // may not happen while the held call is on the thread pool (C_Finalize under a running call
      // is undefined in PKCS#11). The request does not wait for that beyond its deadline.
      const other = new pkcs11js.PKCS11();
      other.load(tk.module);
      other.C_Finalize();
      other.close();
      await expectXks(b2.encrypt(KEY, Buffer.from('x'), aad), 'DependencyTimeoutException');
      await first;
      const up = new Promise<void>((resolve) => b2.onAvailabilityChange((a) => a && resolve()));
      net2.releaseHeld(); // the held call returns; the re-initialisation can run
      await up;
      const pt = randomBytes(16);
      const r = await b2.encrypt(KEY, pt, aad);
      expect((await b2.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
    } finally {
      net2.releaseHeld();
      await b2.close();
    }
  });
});
