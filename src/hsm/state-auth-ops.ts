/**
 * The PKCS#11 operations that authenticate the control state (kill switch, approvals, policies):
 *
 *  - HMAC-SHA256 (CKM_SHA256_HMAC) computed and checked INSIDE the HSM with a generic secret key
 *    that is sensitive and not extractable, so that someone who can write the state folder cannot
 *    produce a valid MAC (docs/runbook-kill-switch.md "Tampering").
 *  - A private token data object (CKO_DATA, CKA_PRIVATE: readable and writable only after
 *    C_Login; replaced, never edited in place) that holds the highest state generation written, so that an older but validly MAC'd
 *    file (state.prev.json copied over state.json) is recognised as a rollback.
 *
 * Functions over (module, session) so that the backend (pool, recovery) and nothing else decides
 * which session runs them. PKCS#11 errors are thrown as they are, for the backend's CKR table;
 * what is a fact about the key (absent, ambiguous, too weak) is thrown as an XksError whose detail
 * names the label only.
 */
import * as os from 'node:os';
import * as pkcs11js from 'pkcs11js';
import { XksError } from '../errors/xks-error';
import { ckrCode } from './ckr-table';

export const HMAC_BYTES = 32;

/** One object of `cls` labelled `label`: its handle, undefined when absent; ambiguity is an error. */
function findOne(p: pkcs11js.PKCS11, session: pkcs11js.Handle, cls: number, label: string): pkcs11js.Handle | undefined {
  p.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  let found: pkcs11js.Handle[];
  try {
    found = p.C_FindObjects(session, 2);
  } finally {
    p.C_FindObjectsFinal(session);
  }
  if (found.length > 1) throw new XksError('InternalException', undefined, `more than one object labelled "${label}" in the token; labels must be unique`);
  return found[0];
}

/**
 * The MAC key, refused unless it is a generic secret (or SHA-256 HMAC) key that never leaves the
 * HSM in clear and may sign and verify: a key that can be read out would be one that file access
 * (a backup of the token) could give.
 */
function macKey(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): pkcs11js.Handle {
  const h = findOne(p, session, pkcs11js.CKO_SECRET_KEY, label);
  if (h === undefined) throw new XksError('KeyNotFoundException', undefined, `no secret key labelled "${label}" in the token`);
  const a = new Map<number, Buffer>();
  const types = [pkcs11js.CKA_KEY_TYPE, pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_SIGN, pkcs11js.CKA_VERIFY];
  for (const v of p.C_GetAttributeValue(session, h, types.map((type) => ({ type })))) a.set(v.type, v.value);
  const flag = (t: number) => (a.get(t)?.[0] ?? 0) !== 0;
  const kt = ulong(a.get(pkcs11js.CKA_KEY_TYPE));
  if (kt !== pkcs11js.CKK_GENERIC_SECRET && kt !== pkcs11js.CKK_SHA256_HMAC) {
    throw new XksError('InvalidKeyUsageException', undefined, `key "${label}" is not an HMAC (generic secret) key`);
  }
  if (!flag(pkcs11js.CKA_SENSITIVE) || flag(pkcs11js.CKA_EXTRACTABLE)) {
    throw new XksError('InvalidKeyUsageException', undefined, `key "${label}" must be sensitive and not extractable`);
  }
  if (!flag(pkcs11js.CKA_SIGN) || !flag(pkcs11js.CKA_VERIFY)) {
    throw new XksError('InvalidKeyUsageException', undefined, `key "${label}" must allow sign and verify`);
  }
  return h;
}

/** A CK_ULONG attribute (native size and byte order); -1 when absent or of an odd size. */
function ulong(b: Buffer | undefined): number {
  const le = os.endianness() === 'LE';
  if (b?.length === 8) return Number(le ? b.readBigUInt64LE() : b.readBigUInt64BE());
  if (b?.length === 4) return le ? b.readUInt32LE() : b.readUInt32BE();
  return -1;
}

const HMAC_MECHANISM: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_SHA256_HMAC };

/** HMAC-SHA256 of `data`, computed inside the HSM. */
export function hmacSign(p: pkcs11js.PKCS11, session: pkcs11js.Handle, keyLabel: string, data: Buffer): Buffer {
  const key = macKey(p, session, keyLabel);
  p.C_SignInit(session, HMAC_MECHANISM, key);
  return Buffer.from(p.C_Sign(session, data, Buffer.alloc(HMAC_BYTES)));
}

/** Checked inside the HSM (C_Verify compares; no MAC comparison in this process). */
export function hmacVerify(p: pkcs11js.PKCS11, session: pkcs11js.Handle, keyLabel: string, data: Buffer, mac: Buffer): boolean {
  const key = macKey(p, session, keyLabel);
  // A MAC of the wrong length cannot be right: answered without an HSM call that would leave a
  // verify operation half done on some modules.
  if (mac.length !== HMAC_BYTES) return false;
  p.C_VerifyInit(session, HMAC_MECHANISM, key);
  try {
    return p.C_Verify(session, data, mac);
  } catch (e) {
    const code = ckrCode(e);
    if (code === pkcs11js.CKR_SIGNATURE_INVALID || code === pkcs11js.CKR_SIGNATURE_LEN_RANGE) return false;
    throw e;
  }
}

/** Handles of the data objects labelled `label` (normally one; two after a crash inside writeDataObject). */
function findData(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): pkcs11js.Handle[] {
  p.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  try {
    return p.C_FindObjects(session, 16);
  } finally {
    p.C_FindObjectsFinal(session);
  }
}

/** CKA_VALUE of every private data object labelled `label` (none: an empty list). */
export function readDataObjects(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): Buffer[] {
  return findData(p, session, label).map((h) => {
    const [v] = p.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_VALUE }]);
    return Buffer.from(v?.value ?? Buffer.alloc(0));
  });
}

/**
 * Writes a new private token data object labelled `label`, then destroys the older ones. A new
 * object rather than C_SetAttributeValue: CKA_VALUE of a data object is read-only on some tokens
 * (SoftHSM2 answers CKR_ATTRIBUTE_READ_ONLY). A crash between the two steps leaves both objects;
 * readers see every value (readDataObjects) and the next write removes the extra one.
 */
export function writeDataObject(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string, value: Buffer): void {
  const older = findData(p, session, label);
  p.C_CreateObject(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    // Private: only a logged-in user (the proxy, the operator CLI with the PIN) can read or change it.
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_APPLICATION, value: 'xks-proxy control state' },
    { type: pkcs11js.CKA_VALUE, value },
  ]);
  for (const h of older) p.C_DestroyObject(session, h);
}
