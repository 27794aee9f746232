/**
 * The interface between the XKS service and a key manager. Only src/hsm/pkcs11-backend.ts knows
 * PKCS#11; everything above talks to this interface, so tests can hand the service a
 * fault-injecting backend next to the real one.
 *
 * Every method either resolves or rejects with an XksError (src/errors): no PKCS#11 error escapes
 * src/hsm/.
 */

import type { KeyVersionObject } from './key-versions';
import type { HsmCallStats } from './call-latency';

/** Spec GetKeyMetadata keyUsage values a PKCS#11 key can have (at most ten). */
export type KeyUsage = 'ENCRYPT' | 'DECRYPT' | 'WRAP' | 'UNWRAP' | 'SIGN' | 'VERIFY' | 'DERIVE';

export interface KeyInfo {
  /** The HSM label the key was found by. */
  label: string;
  /** 'AES_256' for a valid XKS key; otherwise a description such as 'AES_128' or 'GENERIC_SECRET'. */
  keySpec: string;
  keyUsage: KeyUsage[];
}

export interface GcmEncryptResult {
  ciphertext: Buffer;
  iv: Buffer;
  tag: Buffer;
}

export interface TokenInfo {
  /** e.g. "SoftHSM project" (CK_TOKEN_INFO.manufacturerID, trimmed). */
  manufacturer: string;
  /** e.g. "SoftHSM v2" plus hardware/firmware versions. */
  model: string;
  /** CK_TOKEN_INFO.serialNumber, trimmed. */
  serialNumber: string;
  label: string;
}

export interface PoolStats {
  size: number;
  inUse: number;
  waiters: number;
}

export interface HsmBackend {
  /** Looks the key up (cached by label); KeyNotFoundException if absent. */
  describeKey(label: string): Promise<KeyInfo>;
  /**
   * AES-256-GCM inside the HSM with a fresh IV and a 128-bit tag. The IV is 12 bytes, or 16 when
   * the HSM generates it (hsm.ivMode 'hsm-appended' on older Luna firmware): the spec allows both.
   * `aad` is the full AAD the spec's construction produced (src/xks/aad.ts), passed through as is.
   * InvalidKeyUsageException if the key may not encrypt.
   */
  encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<GcmEncryptResult>;
  /** InvalidCiphertextException on any authentication failure, with no further detail. */
  decrypt(label: string, ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer>;
  tokenInfo(): TokenInfo;
  poolStats(): PoolStats;
  /** The measured time of the HSM's own calls and the rate it allows (call-latency.ts); optional. */
  callStats?(): HsmCallStats | undefined;
  /**
   * Called with false when the backend finds the HSM unusable (token or module gone) and with
   * true once its background recovery has it working again, so that the deep health check
   * (src/xks/health-monitor.ts) can look at once instead of at its next interval. Optional: a
   * backend without such a notion never calls it.
   */
  onAvailabilityChange?(listener: (available: boolean) => void): void;
  close(): Promise<void>;

  // ---- key versions (key-versions.ts; used by src/xks/key-version-directory.ts) ----
  /** The rotated versions (1, 2, ...) of the key labelled `label`, ascending; none: never rotated. */
  listKeyVersions(label: string): Promise<KeyVersionObject[]>;
  /**
   * Generates the next version of `label` in the HSM and resolves to its number; with `from`,
   * only if the current version is still `from` (else resolves to the current one: another
   * process rotated first).
   */
  createKeyVersion(label: string, from?: number): Promise<number>;
  /**
   * Destroys version `version` of `label` in the HSM (never the current one, nor the original
   * while it is the only one); resolves once it is gone. Retiring is quorum-approved
   * (src/xks/key-retirement.ts); nothing else calls this.
   */
  destroyKeyVersion(label: string, version: number): Promise<void>;

  // ---- control state authentication (state-auth-ops.ts; used by src/control/state-auth.ts) ----
  /** HMAC-SHA256 of `data` inside the HSM with the generic secret key `keyLabel` (KeyNotFoundException if absent). */
  hmacSign(keyLabel: string, data: Buffer): Promise<Buffer>;
  /** Checked inside the HSM: false for a MAC that does not match. */
  hmacVerify(keyLabel: string, data: Buffer, mac: Buffer): Promise<boolean>;
  /** The values of the private token data objects labelled `label` (normally one; none: empty). */
  readDataObjects(label: string): Promise<Buffer[]>;
  /** Replaces the private token data object labelled `label` (a new object, then the old ones destroyed). */
  writeDataObject(label: string, value: Buffer): Promise<void>;
}
