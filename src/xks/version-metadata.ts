/**
 * The ciphertextMetadata this proxy returns from Encrypt once a key has been rotated (spec
 * "Encrypt": up to 20 bytes for the proxy's own use, e.g. a key material version; KMS stores them
 * with the ciphertext and hands them back on Decrypt, and the AAD construction binds them into the
 * GCM tag, src/xks/aad.ts):
 *
 *   byte 0      format, 0x01 (a later layout takes another value; a reader refuses formats it does
 *               not know)
 *   bytes 1..4  uint32be(version), 1 .. 2^32-1: the key version that sealed the ciphertext
 *
 * Version 0, the key's original material, is never written: a ciphertext without metadata is
 * version 0, so that everything sealed before the first rotation (and every ciphertext of a key
 * never rotated) looks exactly as before key versions existed.
 */
export const VERSION_METADATA_FORMAT_1 = 0x01;
const FORMAT_1_BYTES = 5;

export function encodeVersionMetadata(version: number): Buffer {
  if (!Number.isInteger(version) || version < 1 || version > 0xffffffff) throw new RangeError(`key version ${version} cannot be written`);
  const out = Buffer.alloc(FORMAT_1_BYTES);
  out.writeUInt8(VERSION_METADATA_FORMAT_1, 0);
  out.writeUInt32BE(version, 1);
  return out;
}

/**
 * The version named by `metadata`, or undefined when it is not metadata of a known format.
 * Only the canonical encoding is accepted (exact length, version >= 1), so that one version has
 * one metadata value.
 */
export function decodeVersionMetadata(metadata: Buffer): number | undefined {
  if (metadata.length !== FORMAT_1_BYTES || metadata[0] !== VERSION_METADATA_FORMAT_1) return undefined;
  const v = metadata.readUInt32BE(1);
  return v >= 1 ? v : undefined;
}
