/**
 * Key administration for the operator CLI: create an XKS key (AES) or the control state's MAC key
 * (HMAC) in the token, list the secret keys.
 *
 * Keys are generated inside the HSM and can never leave it (CKA_SENSITIVE true, CKA_EXTRACTABLE
 * false). Every usage flag is set explicitly: SoftHSM2 (and others) default CKA_WRAP, CKA_UNWRAP,
 * CKA_SIGN and CKA_VERIFY to true for AES keys, which would give an XKS key powers it must not have.
 *
 * Errors are plain Errors with operator messages (this runs from the CLI, not behind the API).
 */
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../config/schema';
import type { KeyInfo } from './backend';
import { ckrCode, ckrName } from './ckr-table';
import { findSecretKeys, readKeyInfo, withTokenSession } from './pkcs11-token';

export type KeyUsageOption = 'encrypt-decrypt' | 'encrypt' | 'decrypt' | 'none';

export interface CreateKeyOptions {
  label: string;
  /**
   * 'aes' (default): an XKS key. 'hmac': a 256-bit generic secret key that may only sign and
   * verify (CKM_SHA256_HMAC), for authenticating the control state (control.stateAuth.hsmKeyLabel);
   * `usage` and `bits` do not apply to it.
   */
  type?: 'aes' | 'hmac';
  usage: KeyUsageOption;
  /** AES key size; 256 (the default) is the only size XKS accepts, the others exist for tests. */
  bits?: 128 | 192 | 256;
}

const USAGES: Record<KeyUsageOption, { encrypt: boolean; decrypt: boolean }> = {
  'encrypt-decrypt': { encrypt: true, decrypt: true },
  encrypt: { encrypt: true, decrypt: false },
  decrypt: { encrypt: false, decrypt: true },
  none: { encrypt: false, decrypt: false },
};

/**
 * The attributes of a secret key in the token: a private, sensitive, non-extractable token object
 * whose every usage flag is explicit (the HSM's defaults would allow wrap, sign and derive).
 */
export function secretKeyTemplate(label: string, f: { keyType: number; encrypt: boolean; decrypt: boolean; sign?: boolean }): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: f.keyType },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ENCRYPT, value: f.encrypt },
    { type: pkcs11js.CKA_DECRYPT, value: f.decrypt },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: f.sign ?? false },
    { type: pkcs11js.CKA_VERIFY, value: f.sign ?? false },
    { type: pkcs11js.CKA_DERIVE, value: false },
  ];
}

/** An XKS key: AES, with the usage the operator chose. */
export function xksAesKeyTemplate(label: string, usage: { encrypt: boolean; decrypt: boolean }): pkcs11js.Template {
  return secretKeyTemplate(label, { keyType: pkcs11js.CKK_AES, ...usage });
}

/** Generates an AES key labelled opts.label in the token; refuses if a secret key has that label. */
export async function createKey(cfg: HsmConfig, pin: string, opts: CreateKeyOptions): Promise<void> {
  const type = opts.type ?? 'aes';
  if (type !== 'aes' && type !== 'hmac') throw new Error(`Invalid key type "${String(type)}": use aes or hmac.`);
  const bits = opts.bits ?? 256;
  if (bits !== 128 && bits !== 192 && bits !== 256) throw new Error(`Invalid AES key size ${String(bits)}: use 128, 192 or 256.`);
  const usage = USAGES[opts.usage];
  if (!usage) throw new Error(`Invalid key usage "${String(opts.usage)}": use encrypt-decrypt, encrypt, decrypt or none.`);
  if (opts.label.length === 0 || Buffer.byteLength(opts.label, 'utf8') > 256) {
    throw new Error('The key label must be 1 to 256 bytes long.');
  }
  await withTokenSession(cfg, pin, (p, session) => {
    // The backend finds keys by label and refuses ambiguous ones: never create a second one.
    if (findSecretKeys(p, session, opts.label, 1).length > 0) {
      throw new Error(`A secret key labelled "${opts.label}" already exists in token "${cfg.tokenLabel}"; labels must be unique.`);
    }
    const template = type === 'hmac'
      ? // HMAC-SHA256: a key as long as the hash output, for sign and verify only.
        [...secretKeyTemplate(opts.label, { keyType: pkcs11js.CKK_GENERIC_SECRET, encrypt: false, decrypt: false, sign: true }), { type: pkcs11js.CKA_VALUE_LEN, value: 32 }]
      : [...xksAesKeyTemplate(opts.label, usage), { type: pkcs11js.CKA_VALUE_LEN, value: bits / 8 }];
    try {
      p.C_GenerateKey(session, { mechanism: type === 'hmac' ? pkcs11js.CKM_GENERIC_SECRET_KEY_GEN : pkcs11js.CKM_AES_KEY_GEN }, template);
    } catch (e) {
      const code = ckrCode(e);
      throw new Error(
        `Generating the key "${opts.label}" in token "${cfg.tokenLabel}" failed: ${code !== undefined ? ckrName(code) : e instanceof Error ? e.message : String(e)}.`,
      );
    }
  });
}

/** All secret keys of the token, with the KeyInfo the backend reports for them, sorted by label. */
export async function listKeys(cfg: HsmConfig, pin: string): Promise<KeyInfo[]> {
  return withTokenSession(cfg, pin, (p, session) => {
    try {
      const keys = findSecretKeys(p, session, undefined).map((h) => readKeyInfo(p, session, h));
      return keys.sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
    } catch (e) {
      const code = ckrCode(e);
      throw new Error(`Listing the keys of token "${cfg.tokenLabel}" failed: ${code !== undefined ? ckrName(code) : e instanceof Error ? e.message : String(e)}.`);
    }
  });
}
