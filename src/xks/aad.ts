/**
 * The AAD handed to AES-GCM in the HSM (spec "Encrypt", response field ciphertextMetadata):
 *
 *   uint16be(len(aad)) || aad || uint8(len(ciphertextMetadata)) || ciphertextMetadata
 *
 * over the Base64-decoded values; an absent field counts as length 0 with no bytes. The explicit
 * lengths bind the metadata into the tag and stop an aad/metadata swap from decrypting (e.g. no AAD
 * and metadata M must not verify as AAD M and no metadata).
 */
import crypto from 'node:crypto';

export const MAX_AAD_BYTES_ENCODABLE = 0xffff;
export const MAX_CIPHERTEXT_METADATA_BYTES = 20;

/**
 * The AAD the AWS sample XKS proxy gave AES-GCM, which departs from the specification by hashing
 * the request's AAD:
 *
 *   uint16be(len(aad)) || SHA-256(aad) || uint8(len(ciphertextMetadata)) || ciphertextMetadata
 *
 * where the digest is present only when the request carried an AAD field (even an empty one) and
 * the length is that of the AAD itself, not of its digest. Only Decrypt uses it, for ciphertexts
 * that KMS holds from years behind that proxy (keyStores[].compatibility: aws-sample).
 */
export function buildAwsSampleGcmAad(aad: Buffer | undefined, ciphertextMetadata: Buffer | undefined): Buffer {
  const m = ciphertextMetadata ?? Buffer.alloc(0);
  if (aad && aad.length > MAX_AAD_BYTES_ENCODABLE) throw new RangeError('AAD longer than a 2-byte length can state');
  if (m.length > MAX_CIPHERTEXT_METADATA_BYTES) throw new RangeError('ciphertextMetadata longer than 20 bytes');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(aad?.length ?? 0, 0);
  const digest = aad ? crypto.createHash('sha256').update(aad).digest() : Buffer.alloc(0);
  return Buffer.concat([len, digest, Buffer.from([m.length]), m]);
}

export function buildGcmAad(aad: Buffer | undefined, ciphertextMetadata: Buffer | undefined): Buffer {
  const a = aad ?? Buffer.alloc(0);
  const m = ciphertextMetadata ?? Buffer.alloc(0);
  if (a.length > MAX_AAD_BYTES_ENCODABLE) throw new RangeError('AAD longer than a 2-byte length can state');
  if (m.length > MAX_CIPHERTEXT_METADATA_BYTES) throw new RangeError('ciphertextMetadata longer than 20 bytes');
  const out = Buffer.allocUnsafe(2 + a.length + 1 + m.length);
  out.writeUInt16BE(a.length, 0);
  a.copy(out, 2);
  out.writeUInt8(m.length, 2 + a.length);
  m.copy(out, 3 + a.length);
  return out;
}
