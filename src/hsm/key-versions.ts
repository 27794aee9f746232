/**
 * Key versions behind one external key, kept in the token itself so that every proxy on the same
 * HSM agrees on them without a configuration change (docs/runbook-key-rotation.md).
 *
 * Layout in the token:
 * - version 0 is the original key, the secret key labelled `<label>` as before rotation existed;
 * - version N >= 1 is a secret key labelled `<label>#v<N>@<creation time>` (creation time as
 *   ISO 8601 UTC to the second, e.g. `payments#v2@2026-11-27T09:55:01Z`) whose CKA_ID is
 *   "XKV1" || the first 16 bytes of SHA-256(<label>) (20 bytes: short enough for any HSM's CKA_ID).
 *   The creation time is in the label rather than in CKA_START_DATE because that attribute only
 *   holds a day and cannot be read back through pkcs11js.
 * One C_FindObjects on that CKA_ID finds every rotated version of a key, however many other keys
 * the token holds; the label is then checked exactly, so a hash prefix collision cannot mix keys.
 * The current version is the highest one.
 *
 * Versions are generated inside the HSM with the usage of the current version, AES-256,
 * sensitive and non-extractable (key-admin.ts xksAesKeyTemplate).
 */
import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { XksError } from '../errors/xks-error';
import { xksAesKeyTemplate } from './key-admin';
import { findSecretKeys, readKeyInfo } from './pkcs11-token';

/** What the token says about one rotated version (version 0 is not listed: it is the label itself). */
export interface KeyVersionObject {
  version: number;
  /** Its CKA_LABEL, by which the backend finds it. */
  hsmLabel: string;
  /** When it was generated (ISO 8601 UTC), from its label. */
  created: string | undefined;
  /** More than one object carries this version's label: never use it. */
  ambiguous: boolean;
}

const ID_MAGIC = Buffer.from('XKV1', 'ascii');
/** Versions are numbered from 1 up to this (they go in 4 bytes of ciphertextMetadata). */
export const MAX_KEY_VERSION = 0xffffffff;

/** The label a version gets when generated at `now`. */
export function newVersionLabel(label: string, version: number, now: Date): string {
  return `${label}#v${version}@${now.toISOString().slice(0, 19)}Z`;
}

/** The CKA_ID shared by all rotated versions of the key labelled `label`. */
export function versionGroupId(label: string): Buffer {
  return Buffer.concat([ID_MAGIC, crypto.createHash('sha256').update(label, 'utf8').digest().subarray(0, 16)]);
}

const VERSION_SUFFIX_RE = /^([1-9][0-9]{0,9})(?:@([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z))?$/;

function parseVersion(label: string, objectLabel: string): { version: number; created: string | undefined } | undefined {
  const prefix = `${label}#v`;
  if (!objectLabel.startsWith(prefix)) return undefined;
  // Canonical decimal only ("v01" is not version 1): one label per version.
  const m = VERSION_SUFFIX_RE.exec(objectLabel.slice(prefix.length));
  if (!m) return undefined;
  const n = Number(m[1]);
  return n <= MAX_KEY_VERSION ? { version: n, created: m[2] } : undefined;
}

/** The rotated versions of `label` in the token, ascending. */
export function findKeyVersions(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): KeyVersionObject[] {
  p.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_ID, value: versionGroupId(label) },
  ]);
  let handles: pkcs11js.Handle[] = [];
  try {
    for (let batch = p.C_FindObjects(session, 100); batch.length > 0 && handles.length < 100_000; batch = p.C_FindObjects(session, 100)) handles = handles.concat(batch);
  } finally {
    p.C_FindObjectsFinal(session);
  }
  const byVersion = new Map<number, KeyVersionObject>();
  for (const h of handles) {
    const [l] = p.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_LABEL }]);
    const hsmLabel = l?.value.toString('utf8') ?? '';
    const v = parseVersion(label, hsmLabel);
    if (v === undefined) continue;
    const seen = byVersion.get(v.version);
    if (seen) seen.ambiguous = true;
    else byVersion.set(v.version, { version: v.version, hsmLabel, created: v.created, ambiguous: false });
  }
  return [...byVersion.values()].sort((a, b) => a.version - b.version);
}

/** A fact about the key (not a PKCS#11 failure): an XksError whose detail is the operator message. */
function fact(detail: string): XksError {
  return new XksError('InternalException', undefined, detail);
}

/**
 * Generates the next version of `label` inside the HSM and returns its number. The new key gets
 * the encrypt/decrypt usage of the current version. Throws an XksError whose detail is the
 * operator message when the current version is missing or not AES-256, or the HSM refuses to generate.
 *
 * With `from`, nothing is generated unless the current version is still `from`: the current
 * version is returned instead (another process rotated first; a rotation is asked for once).
 *
 * Two processes rotating at the same moment could both create version N: after generating, the
 * versions are searched again and, if N is not unique, the key just made is destroyed and the
 * rotation reported as lost to the other process (the caller re-reads the versions).
 */
export function generateKeyVersion(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string, from?: number, now = new Date()): number {
  const versions = findKeyVersions(p, session, label);
  const last = versions[versions.length - 1];
  const current = last?.version ?? 0;
  if (from !== undefined && current !== from) return current;
  if (current >= MAX_KEY_VERSION) throw fact(`Key "${label}" has no version number left.`);
  const currentLabel = last?.hsmLabel ?? label;
  const currentHandles = findSecretKeys(p, session, currentLabel, 2);
  if (currentHandles.length !== 1) throw fact(`The current version of key "${label}" ("${currentLabel}") is ${currentHandles.length ? 'ambiguous' : 'missing'} in the token.`);
  const info = readKeyInfo(p, session, currentHandles[0]!);
  if (info.keySpec !== 'AES_256') throw fact(`Key "${label}" is ${info.keySpec}, not AES_256: it cannot be rotated.`);
  const next = current + 1;
  const nextLabel = newVersionLabel(label, next, now);
  const usage = { encrypt: info.keyUsage.includes('ENCRYPT'), decrypt: info.keyUsage.includes('DECRYPT') };
  const handle = p.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
    ...xksAesKeyTemplate(nextLabel, usage),
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_ID, value: versionGroupId(label) },
  ]);
  if (findKeyVersions(p, session, label).find((v) => v.version === next)?.ambiguous) {
    p.C_DestroyObject(session, handle);
    throw fact(`Another process created version ${next} of key "${label}" at the same moment; this one was withdrawn.`);
  }
  return next;
}

/**
 * Destroys version `version` of `label` in the HSM (C_DestroyObject) and returns the CKA_LABEL of
 * the object destroyed. Checked again here, in the same session as the destroy, whatever the
 * caller checked before: the current (encrypting) version is never destroyed, and neither is the
 * original key while it is the only version. Version 0 is the object labelled `label` itself.
 * Throws an XksError whose detail is the operator message when the version is missing, ambiguous
 * or current.
 */
export function destroyKeyVersion(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string, version: number): string {
  const versions = findKeyVersions(p, session, label);
  const current = versions[versions.length - 1]?.version ?? 0;
  if (version === current) throw fact(version === 0 ? `Version 0 is the only version of key "${label}": retiring it would destroy the key.` : `Version ${version} is the current (encrypting) version of key "${label}": rotate first.`);
  const hsmLabel = version === 0 ? label : versions.find((v) => v.version === version)?.hsmLabel;
  if (hsmLabel === undefined) throw fact(`Key "${label}" has no version ${version} in the token.`);
  const handles = findSecretKeys(p, session, hsmLabel, 2);
  if (handles.length !== 1) throw fact(`Version ${version} of key "${label}" ("${hsmLabel}") is ${handles.length ? 'ambiguous' : 'missing'} in the token; nothing was destroyed.`);
  p.C_DestroyObject(session, handles[0]!);
  return hsmLabel;
}
