/**
 * Kill-switch scopes, written as strings everywhere (state file, admin API, CLI, logs):
 *   proxy                  the whole proxy: every key store, every API (GetHealthStatus included)
 *   keystore:NAME          one key store (one URI path prefix), every API
 *   key:NAME/EXTERNALKEYID one external key: Encrypt/Decrypt refused, GetKeyMetadata says DISABLED
 */
import { EXTERNAL_KEY_ID_RE } from '../config/schema';

export type Scope = { kind: 'proxy' } | { kind: 'keystore'; keyStore: string } | { kind: 'key'; keyStore: string; externalKeyId: string };

const KEY_STORE_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;

export class ScopeError extends Error {}

export function parseScope(s: string): Scope {
  if (s === 'proxy') return { kind: 'proxy' };
  if (s.startsWith('keystore:')) {
    const keyStore = s.slice('keystore:'.length);
    if (!KEY_STORE_NAME_RE.test(keyStore)) throw new ScopeError(`invalid key store name in scope "${s}"`);
    return { kind: 'keystore', keyStore };
  }
  if (s.startsWith('key:')) {
    const rest = s.slice('key:'.length);
    const slash = rest.indexOf('/');
    const keyStore = slash < 0 ? '' : rest.slice(0, slash);
    const externalKeyId = slash < 0 ? '' : rest.slice(slash + 1);
    if (!KEY_STORE_NAME_RE.test(keyStore) || !EXTERNAL_KEY_ID_RE.test(externalKeyId)) throw new ScopeError(`invalid key scope "${s}": expected key:KEYSTORE/EXTERNALKEYID`);
    return { kind: 'key', keyStore, externalKeyId };
  }
  throw new ScopeError(`invalid scope "${s}": expected proxy, keystore:NAME or key:NAME/EXTERNALKEYID`);
}

export function formatScope(s: Scope): string {
  switch (s.kind) {
    case 'proxy':
      return 'proxy';
    case 'keystore':
      return `keystore:${s.keyStore}`;
    case 'key':
      return `key:${s.keyStore}/${s.externalKeyId}`;
  }
}

/** Parse and check that the key store exists; returns the canonical string. */
export function checkScope(s: string, keyStoreNames: readonly string[]): string {
  const sc = parseScope(s);
  if (sc.kind !== 'proxy' && !keyStoreNames.includes(sc.keyStore)) throw new ScopeError(`no key store named "${sc.keyStore}" (have: ${keyStoreNames.join(', ')})`);
  return formatScope(sc);
}

/** Map key of a blocked external key in the hot path. Key store names never contain "/". */
export function keyRef(keyStore: string, externalKeyId: string): string {
  return `${keyStore}/${externalKeyId}`;
}
