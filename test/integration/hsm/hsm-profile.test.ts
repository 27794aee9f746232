/**
 * hsm.profile on a REAL SoftHSM2 token (issue 9, item 4): SoftHSM2 reports a failed GCM tag as
 * CKR_GENERAL_ERROR. Only the 'softhsm2' profile may read that as "the ciphertext is bad"; with any
 * other profile the same code is a device fault: InternalException, and the session is discarded.
 * Also the start-up warning for a network HSM in hsm.callMode 'sync' (item 3).
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import type { HsmConfig } from '../../../src/config/schema';
import { XksError } from '../../../src/errors/xks-error';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import type { AppLogger } from '../../../src/log/logger';
import { captureLogger } from '../../helpers/capture-logger';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectXks, flip } from '../../helpers/xks-expect';

const KEY = 'k-profile';

describe('hsm.profile (real SoftHSM2)', function () {
  this.timeout(60000);
  let tk: TestToken;
  const opened: Pkcs11Backend[] = [];
  const aad = Buffer.from('aad');

  before(async () => {
    tk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: KEY, usage: 'encrypt-decrypt' });
  });
  after(async () => {
    for (const b of opened) await b.close();
    tk?.cleanup();
  });

  async function open(extra: Partial<HsmConfig>, log: AppLogger = captureLogger().log): Promise<Pkcs11Backend> {
    const b = await openPkcs11Backend({ ...tk.hsmConfig, ...extra }, tk.pin, log);
    opened.push(b);
    return b;
  }

  it("'softhsm2' (also recognised from libsofthsm2.so): a wrong tag is InvalidCiphertextException, the session kept", async () => {
    for (const b of [await open({ profile: 'softhsm2' }), await open({})]) {
      const r = await b.encrypt(KEY, Buffer.from('data'), aad);
      const before = b.poolStats().size;
      const e = await expectXks(b.decrypt(KEY, r.ciphertext, r.iv, flip(r.tag), aad), 'InvalidCiphertextException');
      expect(e.detail).to.match(/CKR_GENERAL_ERROR/);
      expect(b.poolStats().size).to.equal(before);
    }
  });

  for (const profile of ['generic', 'luna', 'cloudhsm', 'nshield'] as const) {
    it(`'${profile}': the same CKR_GENERAL_ERROR is InternalException (a device fault there), the session discarded`, async () => {
      const b = await open({ profile, callMode: 'async', callTimeoutMs: 30000 });
      const pt = randomBytes(20);
      const r = await b.encrypt(KEY, pt, aad);
      expect(b.poolStats().size).to.be.greaterThan(0);
      const e = await expectXks(b.decrypt(KEY, r.ciphertext, r.iv, flip(r.tag), aad), 'InternalException');
      expect(e.detail).to.match(/CKR_GENERAL_ERROR/);
      expect(e.message).to.equal(new XksError('InternalException').message);
      expect(b.poolStats().size).to.equal(0, 'the sessions were dropped');
      // Data errors with a standard code are still the client's: a wrong IV length never reaches
      // the HSM, a good ciphertext still decrypts.
      await expectXks(b.decrypt(KEY, r.ciphertext, r.iv.subarray(0, 8), r.tag, aad), 'InvalidCiphertextException');
      expect((await b.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
    });
  }

  it('warns at start-up when a network HSM profile runs in callMode sync, and only then', async () => {
    const warned = (lines: string[]) => lines.some((l) => l.includes('"level":"warn"') && l.includes('callMode is \\"sync\\" for a network HSM'));
    for (const [extra, expected] of [
      [{ profile: 'luna', callMode: 'sync' }, true],
      [{ profile: 'cloudhsm', callMode: 'sync' }, true],
      [{ profile: 'nshield', callMode: 'sync' }, true],
      [{ profile: 'luna', callMode: 'async' }, false],
      [{ profile: 'softhsm2', callMode: 'sync' }, false],
      [{ profile: 'generic', callMode: 'sync' }, false],
    ] as [Partial<HsmConfig>, boolean][]) {
      const cap = captureLogger();
      await open(extra, cap.log);
      expect(warned(cap.lines), JSON.stringify(extra)).to.equal(expected);
    }
  });
});
