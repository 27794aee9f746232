/**
 * Who produces the AES-GCM IV of an Encrypt, per `hsm.ivMode`, and how the backend builds the
 * request and reads the answer for each mode. Pure buffer logic: pkcs11-backend.ts makes the
 * PKCS#11 calls (C_EncryptInit with CK_GCM_PARAMS.pIv = `paramsIv`, then C_Encrypt into a buffer of
 * `outputBytes`) and hands the output to `finish`.
 *
 * The XKS spec (Encrypt response) lets the proxy return an initializationVector of 12 or 16 bytes,
 * produced by the proxy or the key manager, never reused under one key. Some HSMs in their
 * certified modes refuse to use a caller's IV for GCM encryption and generate it themselves:
 *
 * - 'proxy' (default; SoftHSM2, Luna outside FIPS mode): a fresh random 12-byte IV from the proxy
 *   (iv-source.ts) is passed in the parameters and reported. Output = ciphertext || tag.
 * - 'hsm-params' (AWS CloudHSM): the CloudHSM PKCS#11 documentation says the HSM ignores the IV in
 *   the request, generates a 12-byte IV and writes it to the memory CK_GCM_PARAMS.pIv points to;
 *   the caller passes a zero-filled 12-byte buffer for it. pkcs11js passes a Buffer's own memory as pIv (params.cpp, read_property_bytes: no
 *   copy), so the write-back shows in our Buffer. Output = ciphertext || tag.
 * - 'hsm-appended' (Thales Luna in FIPS mode, HSM policy "Allow non-FIPS algorithms" off): the
 *   Luna SDK documentation (CKM_AES_GCM) says the HSM generates the IV and appends it to the
 *   output: ciphertext || tag || IV, the IV being 16 bytes before firmware 7.9.3 and, from 7.9.3,
 *   12 or 16 bytes depending on ulIvBits. The request carries an EMPTY IV (ulIvLen 0): that is
 *   how the Luna documentation's table asks for a generated IV, and a Luna given a 12-byte IV uses
 *   it as is (outside FIPS mode), which with a zero-filled buffer would be a fixed IV.
 *
 * Fail closed: when the answer does not look like the configured mode (the HSM did not write an
 * IV, did not append one, appended something that is not 12 or 16 bytes, or produced an all-zero
 * IV), `finish` throws InternalException and nothing is returned; its log-only detail says that
 * hsm.ivMode does not match the HSM. A zero IV is never reported: it is what our own zero-filled
 * buffer looks like when the HSM used it instead of generating one.
 */
import type { HsmConfig } from '../config/schema';
import { XksError } from '../errors/xks-error';
import type { GcmEncryptResult } from './backend';

export type GcmIvMode = HsmConfig['ivMode'];

/** A 96-bit IV is the one NIST SP 800-38D recommends; the proxy's own IVs are that long. */
export const PROXY_IV_BYTES = 12;
/** The tag is always 128 bits, passed explicitly (SoftHSM2 silently accepts odd sizes). */
export const GCM_TAG_BYTES = 16;
/** CloudHSM writes a 12-byte IV back into the parameters. */
const PARAMS_IV_BYTES = 12;
/** IV lengths the spec allows in an Encrypt response, and the ones Luna firmware appends. */
const ALLOWED_IV_BYTES: readonly number[] = [12, 16];
/** Room for the longest IV an HSM may append. */
const MAX_APPENDED_IV_BYTES = 16;

/** One encrypt's request and answer handling for the configured mode. */
export interface GcmEncryptPlan {
  /** The buffer to pass as CK_GCM_PARAMS.pIv; its length is ulIvLen, ulIvBits = 8 * length. */
  readonly paramsIv: Buffer;
  /** Size of the output buffer to give C_Encrypt. */
  readonly outputBytes: number;
  /**
   * Splits C_Encrypt's output (and reads paramsIv again) into ciphertext, IV and tag. Throws
   * XksError InternalException when the answer does not fit the mode (fail closed).
   */
  finish(out: Buffer): GcmEncryptResult;
}

function mismatch(mode: GcmIvMode, what: string): XksError {
  return new XksError('InternalException', undefined, `hsm.ivMode "${mode}" does not match the HSM: ${what}`);
}

/** Ciphertext || tag, the first plaintextBytes + 16 bytes of every mode's output. */
function splitCiphertextAndTag(out: Buffer, plaintextBytes: number): { ciphertext: Buffer; tag: Buffer } {
  return {
    ciphertext: Buffer.from(out.subarray(0, plaintextBytes)),
    tag: Buffer.from(out.subarray(plaintextBytes, plaintextBytes + GCM_TAG_BYTES)),
  };
}

function requireNonZeroIv(mode: GcmIvMode, iv: Buffer, where: string): Buffer {
  if (iv.every((b) => b === 0)) throw mismatch(mode, `the IV ${where} is all zero (the HSM did not generate one)`);
  return iv;
}

/**
 * The plan for one encrypt of `plaintextBytes` bytes. `proxyIv` is called only in 'proxy' mode,
 * once per plan: a retry makes a new plan, so it gets a new IV (and a fresh zero-filled buffer).
 */
export function planGcmEncrypt(mode: GcmIvMode, plaintextBytes: number, proxyIv: () => Buffer): GcmEncryptPlan {
  const ctAndTagBytes = plaintextBytes + GCM_TAG_BYTES;
  const exactLength = (out: Buffer, hint: string): void => {
    if (out.length !== ctAndTagBytes) {
      throw new XksError('InternalException', undefined, `C_Encrypt returned ${out.length} bytes for ${plaintextBytes} (hsm.ivMode "${mode}"${hint})`);
    }
  };
  switch (mode) {
    case 'proxy': {
      const iv = proxyIv();
      return {
        paramsIv: iv,
        outputBytes: ctAndTagBytes,
        finish(out) {
          exactLength(out, '; an HSM that appends its own IV needs "hsm-appended"');
          // The Buffer that went out as pIv: should an HSM overwrite it, we report what it used.
          return { ...splitCiphertextAndTag(out, plaintextBytes), iv };
        },
      };
    }
    case 'hsm-params': {
      const paramsIv = Buffer.alloc(PARAMS_IV_BYTES);
      return {
        paramsIv,
        outputBytes: ctAndTagBytes,
        finish(out) {
          exactLength(out, '');
          const iv = requireNonZeroIv(mode, Buffer.from(paramsIv), 'in CK_GCM_PARAMS.pIv after C_Encrypt');
          return { ...splitCiphertextAndTag(out, plaintextBytes), iv };
        },
      };
    }
    case 'hsm-appended':
      return {
        paramsIv: Buffer.alloc(0),
        outputBytes: ctAndTagBytes + MAX_APPENDED_IV_BYTES,
        finish(out) {
          const ivBytes = out.length - ctAndTagBytes;
          if (!ALLOWED_IV_BYTES.includes(ivBytes)) {
            throw mismatch(mode, `C_Encrypt returned ${out.length} bytes for ${plaintextBytes}, so ${ivBytes} bytes after the tag (a 12- or 16-byte IV expected)`);
          }
          const iv = requireNonZeroIv(mode, Buffer.from(out.subarray(ctAndTagBytes)), 'appended to the output');
          return { ...splitCiphertextAndTag(out, plaintextBytes), iv };
        },
      };
  }
}
