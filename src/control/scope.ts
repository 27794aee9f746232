/**
 * Kill-switch scopes, written as strings everywhere (state file, admin API, CLI, logs):
 *   proxy                  the whole proxy: every key store, every API (GetHealthStatus included)
 *   keystore:NAME          one key store (one URI path prefix), every API
 *   key:NAME/EXTERNALKEYID one external key: Encrypt/Decrypt refused, GetKeyMetadata says DISABLED,
 *                          and the same for every other id (in any key store) that reaches the same
 *                          HSM key (its label), now or after a reload (blockCoverage)
 */
import { EXTERNAL_KEY_ID_RE } from '../config/schema';
import type { KeyDirectory, KeyPath } from './key-directory';

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

/** What a block covers in a given configuration: what `killswitch show` reports. */
export interface BlockCoverage {
  /** For key blocks: the HSM keys (labels) it stops. */
  hsmKeys: string[];
  /** For key blocks: every key store / external key id that reaches one of those HSM keys. */
  externalKeys: KeyPath[];
  /** The key stores it concerns; "*" for the proxy scope. */
  keyStores: string[];
  /** Key stores it names that are not configured now (removed by a reload): it re-applies if they come back. */
  notConfigured: string[];
}

/**
 * The HSM keys a key block stops: the one its id named when it was engaged (`recorded`, kept in the
 * block) and the one it names in `dir` now, so that neither a reload that points the id elsewhere
 * nor a new id for the same HSM key opens a side door.
 */
export function blockedHsmKeys(scope: string, recorded: string | undefined, dir: KeyDirectory): string[] {
  const sc = parseScope(scope);
  if (sc.kind !== 'key') return [];
  const now = dir.hsmKeyOf(sc.keyStore, sc.externalKeyId);
  return [...new Set([recorded, now].filter((k): k is string => k !== undefined))];
}

export function blockCoverage(block: { scope: string; hsmKey?: string | undefined }, dir: KeyDirectory): BlockCoverage {
  const sc = parseScope(block.scope);
  if (sc.kind === 'proxy') return { hsmKeys: [], externalKeys: [], keyStores: ['*'], notConfigured: [] };
  const hsmKeys = blockedHsmKeys(block.scope, block.hsmKey, dir);
  const direct: KeyPath[] = sc.kind === 'key' ? [{ keyStore: sc.keyStore, externalKeyId: sc.externalKeyId }] : [];
  const seen = new Set<string>();
  const externalKeys = [...direct, ...hsmKeys.flatMap((k) => dir.pathsTo(k))].filter((p) => {
    const k = keyRef(p.keyStore, p.externalKeyId);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  const names = dir.names();
  const keyStores = [...new Set([sc.keyStore, ...externalKeys.map((p) => p.keyStore)])];
  return { hsmKeys, externalKeys, keyStores, notConfigured: keyStores.filter((n) => !names.includes(n)) };
}
