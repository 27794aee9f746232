/**
 * Key versions for the operator CLI (`xks-proxy keys rotate|versions`): the same token operations
 * the running proxy uses (key-versions.ts), over a short session of their own. Errors are plain
 * Errors with operator messages.
 */
import type { HsmConfig } from '../config/schema';
import { XksError } from '../errors/xks-error';
import { ckrCode, ckrName } from './ckr-table';
import { findKeyVersions, generateKeyVersion, type KeyVersionObject } from './key-versions';
import { findSecretKeys, withTokenSession } from './pkcs11-token';

function operatorError(what: string, e: unknown): Error {
  if (e instanceof XksError) return new Error(e.detail ?? e.message);
  const code = ckrCode(e);
  return new Error(`${what} failed: ${code !== undefined ? ckrName(code) : e instanceof Error ? e.message : String(e)}.`);
}

/** Generates the next version of the key labelled `label`; resolves to its number. */
export async function rotateKey(cfg: HsmConfig, pin: string, label: string): Promise<number> {
  return withTokenSession(cfg, pin, (p, session) => {
    try {
      return generateKeyVersion(p, session, label);
    } catch (e) {
      throw operatorError(`Generating a new version of key "${label}" in token "${cfg.tokenLabel}"`, e);
    }
  });
}

/** Is the original key (version 0) labelled `label` still in the token (not retired)? */
export async function hasOriginalVersion(cfg: HsmConfig, pin: string, label: string): Promise<boolean> {
  return withTokenSession(cfg, pin, (p, session) => findSecretKeys(p, session, label, 1).length > 0);
}

/** The rotated versions of `label` (version 0, the original key, is not listed). */
export async function listKeyVersions(cfg: HsmConfig, pin: string, label: string): Promise<KeyVersionObject[]> {
  return withTokenSession(cfg, pin, (p, session) => {
    try {
      return findKeyVersions(p, session, label);
    } catch (e) {
      throw operatorError(`Listing the versions of key "${label}" in token "${cfg.tokenLabel}"`, e);
    }
  });
}
