/**
 * SigV4 credentials of a key store, changed through the admin API and the CLI (spec "SigV4
 * credentials rotation": several credentials at once, changes without restart). Credentials held
 * in the key store's credentialsDir, or, in fleet mode, in etcd (keyStores[].fleetCredentials),
 * can be added or removed here; inline ones live in the config file.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SECRET_FILE_SUFFIX, type KeyStoreRegistry } from '../auth/key-stores';
import { kmsProxyConfiguration, newCredential, type KmsProxyConfiguration } from '../auth/credentials';
import { ACCESS_KEY_ID_RE, type Config } from '../config/schema';
import type { FleetCredentials } from '../control/fleet-credentials';
import { ControlError } from '../control/state-model';
import { fsyncDir } from '../util/durable-fs';

export interface AddedCredential {
  accessKeyId: string;
  kmsProxyConfiguration: KmsProxyConfiguration;
  /** Fleet credentials: the etcd revision of the write. */
  revision?: number;
}

export async function addCredential(config: Readonly<Config>, registry: KeyStoreRegistry, keyStore: string, fleet?: FleetCredentials): Promise<AddedCredential> {
  const cfg = config.keyStores.find((k) => k.name === keyStore);
  if (!registry.byName(keyStore) || !cfg) throw new ControlError('invalid', `no key store named "${keyStore}"`);
  if (cfg.fleetCredentials) {
    if (!fleet) throw new ControlError('conflict', `key store ${keyStore} takes fleet credentials, but this process is not a fleet member`);
    const out = await fleet.create(keyStore);
    // Active at once on this member (the others apply it from their watch).
    if (!registry.byName(keyStore)!.accessKeyIds().includes(out.accessKeyId)) throw new Error(`new credential ${out.accessKeyId} was not picked up`);
    return { accessKeyId: out.accessKeyId, kmsProxyConfiguration: kmsProxyConfiguration(cfg.pathPrefix, out.accessKeyId, out.secret), revision: out.revision };
  }
  let out: ReturnType<typeof newCredential>;
  try {
    out = newCredential(config, keyStore);
  } catch (e) {
    throw new ControlError('invalid', (e as Error).message);
  }
  // Active at once: the next request signed with it verifies.
  registry.reload();
  if (!registry.byName(keyStore)!.accessKeyIds().includes(out.accessKeyId)) throw new Error(`new credential ${out.accessKeyId} was not picked up`);
  return { accessKeyId: out.accessKeyId, kmsProxyConfiguration: JSON.parse(out.kmsConfigJson) as KmsProxyConfiguration };
}

export async function removeCredential(config: Readonly<Config>, registry: KeyStoreRegistry, keyStore: string, accessKeyId: string, fleet?: FleetCredentials): Promise<{ remaining: string[]; revision?: number }> {
  const ks = registry.byName(keyStore);
  const cfg = config.keyStores.find((k) => k.name === keyStore);
  if (!ks || !cfg) throw new ControlError('invalid', `no key store named "${keyStore}"`);
  if (!ACCESS_KEY_ID_RE.test(accessKeyId)) throw new ControlError('not-found', `key store ${keyStore} has no active credential ${accessKeyId}`);
  const fromFleet = ks.fleetAccessKeyIds();
  if (fleet && cfg.fleetCredentials && (fromFleet.includes(accessKeyId) || !ks.accessKeyIds().includes(accessKeyId))) {
    // Also one this member refused (a tampered value): the fleet can still delete it.
    const othersHere = ks.accessKeyIds().filter((a) => a !== accessKeyId && !fromFleet.includes(a));
    const { revision } = await fleet.remove(keyStore, accessKeyId, othersHere);
    return { remaining: registry.byName(keyStore)!.accessKeyIds(), revision };
  }
  if (!ks.accessKeyIds().includes(accessKeyId)) throw new ControlError('not-found', `key store ${keyStore} has no active credential ${accessKeyId}`);
  if (cfg.credentials.some((c) => c.accessKeyId === accessKeyId) || !cfg.credentialsDir) throw new ControlError('conflict', `credential ${accessKeyId} is defined in the configuration file; remove it there`);
  if (ks.accessKeyIds().length <= 1) throw new ControlError('conflict', `refusing to remove the last credential of key store ${keyStore}: KMS could no longer connect. Add the new one first.`);
  fs.rmSync(path.join(cfg.credentialsDir, accessKeyId + SECRET_FILE_SUFFIX));
  fsyncDir(cfg.credentialsDir);
  registry.reload();
  return { remaining: registry.byName(keyStore)!.accessKeyIds() };
}
