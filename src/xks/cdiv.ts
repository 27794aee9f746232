/**
 * Ciphertext Data Integrity Value (spec Appendix C):
 *
 *   Base64(SHA-256(aad || ciphertextMetadata || iv || ciphertext || tag))
 *
 * over the decoded bytes, absent fields as empty. No lengths are included: the CDIV guards
 * against accidental bit flips, not against an adversary (the GCM tag does that).
 */
import crypto from 'node:crypto';

export const CDIV_ALGORITHM = 'SHA_256';

export interface CdivInput {
  aad?: Buffer | undefined;
  ciphertextMetadata?: Buffer | undefined;
  iv: Buffer;
  ciphertext: Buffer;
  tag: Buffer;
}

export function computeCdiv(p: CdivInput): string {
  const h = crypto.createHash('sha256');
  if (p.aad) h.update(p.aad);
  if (p.ciphertextMetadata) h.update(p.ciphertextMetadata);
  return h.update(p.iv).update(p.ciphertext).update(p.tag).digest('base64');
}
