/**
 * The IV-reuse check the HSM tests share, and a fault that breaks it on purpose, so that a test
 * can show the check is able to fail (a GCM IV used twice under one key exposes the XOR of the
 * plaintexts and the authentication key: spec "Encrypt", NIST SP 800-38D section 8).
 */
import { expect } from 'chai';
import * as pkcs11js from 'pkcs11js';

export interface Encrypted {
  iv: Buffer;
  ciphertext: Buffer;
  tag: Buffer;
}

/**
 * Encryptions of the same plaintext and AAD under one key: every IV is different and non-zero,
 * and so is every ciphertext || tag (a repeated IV the HSM used but did not report shows there).
 */
export function expectNoIvReuse(results: Encrypted[]): void {
  expect(results.length).to.be.greaterThan(1);
  const ivs = new Set(results.map((r) => r.iv.toString('hex')));
  expect(ivs.size, 'an IV was used twice').to.equal(results.length);
  expect(results.filter((r) => r.iv.every((b) => b === 0)), 'an all-zero IV').to.have.length(0);
  const outputs = new Set(results.map((r) => r.ciphertext.toString('hex') + r.tag.toString('hex')));
  expect(outputs.size, 'a ciphertext repeated for the same input').to.equal(results.length);
}

/**
 * TEST ONLY: wraps the real module so that every `every`-th GCM C_EncryptInit encrypts under the
 * first IV it saw instead of the caller's, written into the caller's pIv Buffer in place (the
 * memory pkcs11js passes to the module): an HSM, or a proxy IV source, that repeats an IV.
 */
export function ivRepeatingModule(every: number): (real: pkcs11js.PKCS11) => pkcs11js.PKCS11 {
  let first: Buffer | undefined;
  let n = 0;
  return (real) =>
    new Proxy(real, {
      get(target, prop) {
        const v: unknown = Reflect.get(target, prop, target);
        if (prop !== 'C_EncryptInit' || typeof v !== 'function') return typeof v === 'function' ? v.bind(target) : v;
        return (s: pkcs11js.Handle, m: pkcs11js.Mechanism, k: pkcs11js.Handle) => {
          const iv = (m.parameter as pkcs11js.AesGCM | undefined)?.iv;
          if (m.mechanism === pkcs11js.CKM_AES_GCM && iv) {
            first ??= Buffer.from(iv);
            if (++n % every === 0) first.copy(iv);
          }
          return target.C_EncryptInit(s, m, k);
        };
      },
    });
}
