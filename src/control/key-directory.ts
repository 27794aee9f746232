/**
 * The control plane's view of the configured key stores, read live (never copied at start-up), so
 * that a key store or key added by hot reload can be blocked or given a policy at once.
 *
 * A key block names an external key id, but what it must stop is the HSM key behind it: two ids
 * (in one key store or in two) may name the same key (keyStores[].keys[].label, its CKA_LABEL in
 * the one token the proxy uses). The directory answers both ways: id -> HSM key, HSM key -> every
 * id that reaches it.
 */
import type { KeyStoreConfig } from '../config/schema';

export interface KeyPath {
  keyStore: string;
  externalKeyId: string;
}

export interface KeyDirectory {
  /** The key stores configured now. */
  names(): readonly string[];
  /** The HSM key (label) that `externalKeyId` of `keyStore` names now, if configured. */
  hsmKeyOf(keyStore: string, externalKeyId: string): string | undefined;
  /** Every configured (key store, external key id) whose HSM key is `hsmKey`. */
  pathsTo(hsmKey: string): KeyPath[];
}

/** A directory over a fixed list of key store configurations (the CLI reading the config file). */
export function directoryOf(keyStores: readonly Pick<KeyStoreConfig, 'name' | 'keys'>[]): KeyDirectory {
  const labelOf = (k: KeyStoreConfig['keys'][number]) => k.label ?? k.externalKeyId;
  return {
    names: () => keyStores.map((k) => k.name),
    hsmKeyOf: (ks, id) => {
      const k = keyStores.find((s) => s.name === ks)?.keys.find((e) => e.externalKeyId === id);
      return k && labelOf(k);
    },
    pathsTo: (hsmKey) => keyStores.flatMap((s) => s.keys.filter((k) => labelOf(k) === hsmKey).map((k) => ({ keyStore: s.name, externalKeyId: k.externalKeyId }))),
  };
}

/** Key store names only, no keys (tests and callers that know no keys). */
export function namesOnly(names: readonly string[]): KeyDirectory {
  return directoryOf(names.map((name) => ({ name, keys: [] })));
}
