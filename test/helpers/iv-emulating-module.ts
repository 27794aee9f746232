/**
 * TEST ONLY: makes the real SoftHSM2 module behave like an HSM that generates the AES-GCM IV of an
 * encryption itself, so that hsm.ivMode 'hsm-params' and 'hsm-appended' run end to end on real
 * crypto. SoftHSM2 cannot generate GCM IVs; this wrapper (a JS Proxy around the pkcs11js object,
 * handed to the backend through wrappedModule(), wrapped-module.ts) draws the IV with node:crypto and
 * passes it to the real C_EncryptInit, then reports it the way the vendor does:
 *
 * - 'hsm-params' (AWS CloudHSM: "the HSM ignores the IV in the request ... and writes the generated
 *   IV to the memory pointed to by pIv"): the random 12-byte IV is written in place into the
 *   caller's CK_GCM_PARAMS iv Buffer (the same memory pkcs11js passes as pIv) before the real
 *   C_EncryptInit, which therefore encrypts with it. A caller buffer of another size gets
 *   CKR_MECHANISM_PARAM_INVALID.
 * - 'hsm-appended' (Luna in FIPS mode: the generated IV is "concatenated at the end" of the
 *   output): the caller's IV is ignored, the real C_EncryptInit gets the emulator's own random IV
 *   (12 bytes, newer firmware, or 16 bytes, older firmware), and C_Encrypt appends it after the
 *   real ciphertext || tag in the caller's output buffer. A buffer without room for it gets
 *   CKR_BUFFER_TOO_SMALL before the real call, so the operation stays active, as PKCS#11 says.
 *
 * Decryption and every other call go to the real module untouched. `seen` records, per
 * C_EncryptInit, the IV length and ulIvBits the caller asked for (never data).
 */
import { randomBytes } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';

export type EmulatedIvVendor = { mode: 'hsm-params' } | { mode: 'hsm-appended'; ivBytes: 12 | 16 };

export interface IvEmulator {
  /** For wrappedModule() (wrapped-module.ts). */
  wrap(real: pkcs11js.PKCS11): pkcs11js.PKCS11;
  /** What each GCM C_EncryptInit asked for: the caller's IV length and ulIvBits. */
  readonly seen: { ivLength: number; ivBits: number }[];
  /** The IVs the emulated HSM generated, in order. */
  readonly generated: Buffer[];
}

function ckrError(name: 'CKR_BUFFER_TOO_SMALL' | 'CKR_MECHANISM_PARAM_INVALID', method: string): pkcs11js.Pkcs11Error {
  const code = pkcs11js[name];
  return new pkcs11js.Pkcs11Error(`${name}:${code}`, code, method);
}

export function ivEmulator(vendor: EmulatedIvVendor): IvEmulator {
  const seen: IvEmulator['seen'] = [];
  const generated: Buffer[] = [];
  /** hsm-appended: the IV to append at the next C_Encrypt, per session (handle bytes as hex). */
  const pending = new Map<string, Buffer>();

  function encryptInit(real: pkcs11js.PKCS11, session: pkcs11js.Handle, mech: pkcs11js.Mechanism, key: pkcs11js.Handle): void {
    if (mech.mechanism !== pkcs11js.CKM_AES_GCM) return real.C_EncryptInit(session, mech, key);
    const params = mech.parameter as pkcs11js.AesGCM;
    const callerIv = params.iv ?? Buffer.alloc(0);
    seen.push({ ivLength: callerIv.length, ivBits: params.ivBits });
    pending.delete(session.toString('hex'));
    if (vendor.mode === 'hsm-params') {
      if (callerIv.length !== 12) throw ckrError('CKR_MECHANISM_PARAM_INVALID', 'C_EncryptInit');
      const iv = randomBytes(12);
      iv.copy(callerIv); // in place: the caller's Buffer is the pIv memory
      generated.push(iv);
      return real.C_EncryptInit(session, mech, key);
    }
    const iv = randomBytes(vendor.ivBytes);
    const own: pkcs11js.AesGCM = { ...params, iv, ivBits: iv.length * 8 };
    real.C_EncryptInit(session, { mechanism: mech.mechanism, parameter: own }, key);
    generated.push(iv);
    pending.set(session.toString('hex'), iv);
  }

  function encrypt(real: pkcs11js.PKCS11, session: pkcs11js.Handle, data: Buffer, out: Buffer): Buffer {
    const iv = pending.get(session.toString('hex'));
    if (!iv) return real.C_Encrypt(session, data, out);
    // GCM output is plaintext-sized ciphertext, then the 16-byte tag, then (here) the IV.
    if (out.length < data.length + 16 + iv.length) throw ckrError('CKR_BUFFER_TOO_SMALL', 'C_Encrypt');
    pending.delete(session.toString('hex'));
    const ctAndTag = real.C_Encrypt(session, data, out);
    iv.copy(out, ctAndTag.length);
    return out.subarray(0, ctAndTag.length + iv.length);
  }

  return {
    seen,
    generated,
    wrap(real) {
      return new Proxy(real, {
        get(target, prop) {
          if (prop === 'C_EncryptInit') return (s: pkcs11js.Handle, m: pkcs11js.Mechanism, k: pkcs11js.Handle) => encryptInit(target, s, m, k);
          if (prop === 'C_Encrypt') return (s: pkcs11js.Handle, d: Buffer, o: Buffer) => encrypt(target, s, d, o);
          const v: unknown = Reflect.get(target, prop, target);
          // Native methods need the real object as `this`.
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
    },
  };
}
