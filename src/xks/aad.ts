/**
 * The AAD handed to AES-GCM in the HSM (spec "Encrypt", response field ciphertextMetadata):
 *
 *   uint16be(len(aad)) || aad || uint8(len(ciphertextMetadata)) || ciphertextMetadata
 *
 * over the Base64-decoded values; an absent field counts as length 0 with no bytes. The explicit
 * lengths bind the metadata into the tag and stop an aad/metadata swap from decrypting (e.g. no AAD
 * and metadata M must not verify as AAD M and no metadata).
 */
export const MAX_AAD_BYTES_ENCODABLE = 0xffff;
export const MAX_CIPHERTEXT_METADATA_BYTES = 20;

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
