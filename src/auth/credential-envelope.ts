/**
 * The sealed form of a SigV4 secret that the fleet distributes through etcd (docs/fleet.md
 * "Credentials across the fleet"): AES-256-GCM made INSIDE the HSM with the wrap key
 * (control.etcd.credentialWrapKeyLabel), through the backend's encrypt/decrypt, so the IV follows
 * hsm.ivMode like every other GCM call of the proxy. Whoever reads etcd sees only ciphertext.
 *
 * The AAD binds the value to where it is stored and to what it says about itself: the format
 * version, the fleet prefix, the key store name and the access key id (taken from the etcd key,
 * never from the value), and the wrap key label, creation time and creator node. So a value copied
 * under another access key id, key store or fleet, or with its metadata edited, does not
 * authenticate and is refused (fail closed).
 */
import type { GcmEncryptResult } from '../hsm/backend';
import { SECRET_RE } from '../config/schema';
import { XksError } from '../errors/xks-error';

export const CREDENTIAL_FORMAT = 'xks-proxy/fleet-credential';
export const CREDENTIAL_FORMAT_VERSION = 1;

/** The HSM calls sealing needs (HsmBackend's AES-GCM, which keeps the key inside the token). */
export interface CredentialCipher {
  encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<GcmEncryptResult>;
  decrypt(label: string, ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer>;
}

/** Where a sealed credential lives: what its AAD binds besides its own metadata. */
export interface CredentialName {
  /** The fleet's etcd prefix (normalised, ends with "/"). */
  prefix: string;
  keyStore: string;
  accessKeyId: string;
}

export interface CredentialMeta {
  wrapKeyLabel: string;
  createdAt: string;
  createdBy: string;
}

/** The value stored in etcd: JSON, no secret in clear. */
export interface SealedCredential extends CredentialMeta {
  format: typeof CREDENTIAL_FORMAT;
  version: number;
  iv: string;
  ciphertext: string;
  tag: string;
}

/**
 * A value that is not accepted; the message never contains the secret. `retryable`: the HSM did not
 * give an answer about the value (busy, timed out, failing), so the same value may open later.
 */
export class CredentialRefused extends Error {
  constructor(
    message: string,
    readonly retryable = false,
  ) {
    super(message);
  }
}

function aadOf(name: CredentialName, version: number, meta: CredentialMeta): Buffer {
  // A JSON array of strings: unambiguous field boundaries (no "a/b" + "c" = "a" + "b/c").
  return Buffer.from(JSON.stringify([CREDENTIAL_FORMAT, version, name.prefix, name.keyStore, name.accessKeyId, meta.wrapKeyLabel, meta.createdAt, meta.createdBy]), 'utf8');
}

export async function sealCredential(cipher: CredentialCipher, name: CredentialName, secret: string, meta: CredentialMeta): Promise<string> {
  if (!SECRET_RE.test(secret)) throw new Error('the secret does not match the spec format (Appendix A)');
  const plaintext = Buffer.from(secret, 'utf8');
  try {
    const r = await cipher.encrypt(meta.wrapKeyLabel, plaintext, aadOf(name, CREDENTIAL_FORMAT_VERSION, meta));
    const sealed: SealedCredential = { format: CREDENTIAL_FORMAT, version: CREDENTIAL_FORMAT_VERSION, ...meta, iv: r.iv.toString('base64'), ciphertext: r.ciphertext.toString('base64'), tag: r.tag.toString('base64') };
    return JSON.stringify(sealed);
  } catch (e) {
    throw new Error(`cannot encrypt the secret in the HSM with key "${meta.wrapKeyLabel}": ${hsmReason(e, meta.wrapKeyLabel).reason}`);
  } finally {
    plaintext.fill(0);
  }
}

/** The secret of a sealed value, or CredentialRefused saying why (never with the secret). */
/**
 * `wrapKeyLabel`: the one key this fleet seals credentials with (control.etcd.credentialWrapKeyLabel).
 * A value naming another key is refused before any HSM call: the label is part of the value, and
 * whoever can write etcd and also get a tag made under another key of the token (an XKS key
 * encrypts a caller's plaintext under a caller's AAD) would otherwise choose the key that opens it.
 */
export async function openCredential(cipher: CredentialCipher, name: CredentialName, text: string, wrapKeyLabel: string): Promise<{ secret: string; meta: CredentialMeta }> {
  let v: Partial<SealedCredential>;
  try {
    v = JSON.parse(text) as Partial<SealedCredential>;
  } catch {
    throw new CredentialRefused('the value is not JSON');
  }
  if (v === null || typeof v !== 'object' || v.format !== CREDENTIAL_FORMAT) throw new CredentialRefused(`the value is not a ${CREDENTIAL_FORMAT}`);
  if (v.version !== CREDENTIAL_FORMAT_VERSION) throw new CredentialRefused(`format version ${String(v.version)} is not supported (this proxy reads ${CREDENTIAL_FORMAT_VERSION})`);
  const str = (k: keyof SealedCredential): string => {
    const x = v[k];
    if (typeof x !== 'string' || x.length === 0) throw new CredentialRefused(`field "${k}" is missing`);
    return x;
  };
  const meta: CredentialMeta = { wrapKeyLabel: str('wrapKeyLabel'), createdAt: str('createdAt'), createdBy: str('createdBy') };
  if (meta.wrapKeyLabel !== wrapKeyLabel) throw new CredentialRefused(`the value names the HSM key "${meta.wrapKeyLabel}", not this fleet's wrap key "${wrapKeyLabel}" (control.etcd.credentialWrapKeyLabel)`);
  const [iv, ciphertext, tag] = [str('iv'), str('ciphertext'), str('tag')].map((b) => Buffer.from(b, 'base64'));
  let plaintext: Buffer;
  try {
    plaintext = await cipher.decrypt(meta.wrapKeyLabel, ciphertext!, iv!, tag!, aadOf(name, v.version, meta));
  } catch (e) {
    const r = hsmReason(e, meta.wrapKeyLabel);
    throw new CredentialRefused(r.reason, r.retryable);
  }
  const secret = plaintext.toString('utf8');
  plaintext.fill(0);
  if (!SECRET_RE.test(secret)) throw new CredentialRefused('the decrypted value is not a spec-conformant secret');
  return { secret, meta };
}

/** An operator's reason for an HSM refusal (names the key, never the data), and whether it may pass. */
function hsmReason(e: unknown, label: string): { reason: string; retryable: boolean } {
  if (e instanceof XksError) {
    if (e.errorName === 'InvalidCiphertextException') return { reason: `does not authenticate under the wrap key "${label}" (tampered, copied under another name, or sealed with another key)`, retryable: false };
    if (e.errorName === 'KeyNotFoundException') return { reason: `the wrap key "${label}" is not in the token (create it: xks-proxy keys create --label ${label})`, retryable: false };
    if (e.errorName === 'InvalidKeyUsageException') return { reason: `the wrap key "${label}" may not encrypt and decrypt`, retryable: false };
    // Busy pool, deadline, a failing or recovering HSM: no verdict on the value.
    return { reason: `${e.errorName} from the HSM`, retryable: true };
  }
  return { reason: 'the HSM call failed', retryable: true };
}
