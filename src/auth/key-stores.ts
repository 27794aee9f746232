/**
 * Key stores: each URI path prefix is one logical key store (spec "API operations": the
 * optional path prefix isolates tenants) with its own SigV4 credentials and its own external keys.
 *
 * Credentials come from the config (secret in env or file) and from an optional folder of
 * <ACCESSKEYID>.secret files that is re-read while the proxy runs, so that a new credential can
 * be added, KMS switched over with UpdateCustomKeyStore, and the old one removed, all without a
 * restart (spec "SigV4 credentials rotation"). A file that cannot be read or does not hold a
 * spec-conformant secret is left out (fail closed) and reported in the log.
 *
 * Fleet mode adds a third source: credentials distributed through etcd, encrypted in the HSM, that
 * src/control/fleet-credentials.ts decrypts and hands over (setFleetCredentials) for the key stores
 * with keyStores[].fleetCredentials.
 */
import type { KeyRotation } from '../xks/key-versions-config';
import fs from 'node:fs';
import path from 'node:path';
import type { Config, KeyStoreConfig } from '../config/schema';
import { ACCESS_KEY_ID_RE, SECRET_RE, XKS_API_SUFFIX } from '../config/schema';
import { readSecret, SECRET_FILE_SUFFIX } from '../config/secrets';
import type { AppLogger } from '../log/logger';
import { TokenBucket } from '../util/token-bucket';
import type { SecretLookup } from './sigv4';

export { SECRET_FILE_SUFFIX };

export interface ExternalKeyEntry {
  externalKeyId: string;
  label: string;
  enabled: boolean;
  /** This key's own rotation triggers (keyVersions.rotation otherwise). */
  rotation?: KeyRotation | undefined;
}

/** A credential the fleet distributes (src/control/fleet-credentials.ts), as decrypted. */
export interface FleetSecret {
  secret: string;
  createdAtMs: number | undefined;
}

export class KeyStore implements SecretLookup {
  readonly name: string;
  readonly pathPrefix: string;
  /** XksProxyUriPath as KMS is configured with it. */
  readonly uriPath: string;
  private readonly keys: Map<string, ExternalKeyEntry>;
  /** The key store's own request quota, if the operator set one. */
  readonly quota: TokenBucket | undefined;
  /** Which GCM AAD layouts Decrypt accepts (keyStores[].compatibility). */
  readonly compatibility: KeyStoreConfig['compatibility'];
  private staticCredentials = new Map<string, string>();
  private dirCredentials = new Map<string, string>();
  private fleetCredentials = new Map<string, string>();

  constructor(
    cfg: KeyStoreConfig,
    private readonly registry: KeyStoreRegistry,
  ) {
    this.name = cfg.name;
    this.pathPrefix = cfg.pathPrefix;
    this.uriPath = cfg.pathPrefix + XKS_API_SUFFIX;
    this.compatibility = cfg.compatibility;
    this.quota = cfg.quota && new TokenBucket(cfg.quota.requestsPerSecond, cfg.quota.burst ?? Math.max(1, Math.ceil(cfg.quota.requestsPerSecond)));
    this.keys = new Map(cfg.keys.map((k) => [k.externalKeyId, { externalKeyId: k.externalKeyId, label: k.label ?? k.externalKeyId, enabled: k.enabled, rotation: k.rotation }]));
  }

  key(externalKeyId: string): ExternalKeyEntry | undefined {
    return this.keys.get(externalKeyId);
  }

  keyList(): ExternalKeyEntry[] {
    return [...this.keys.values()];
  }

  secretFor(accessKeyId: string): string | undefined {
    return this.staticCredentials.get(accessKeyId) ?? this.dirCredentials.get(accessKeyId) ?? this.fleetCredentials.get(accessKeyId);
  }

  ownerOf(accessKeyId: string): string | undefined {
    return this.registry.ownerOf(accessKeyId);
  }

  accessKeyIds(): string[] {
    return [...new Set([...this.staticCredentials.keys(), ...this.dirCredentials.keys(), ...this.fleetCredentials.keys()])];
  }

  /** The access key ids of this key store that came from the fleet (etcd). */
  fleetAccessKeyIds(): string[] {
    return [...this.fleetCredentials.keys()];
  }

  /** @internal used by the registry */
  setCredentials(staticCreds: Map<string, string>, dirCreds: Map<string, string>, fleetCreds: Map<string, string>): void {
    this.staticCredentials = staticCreds;
    this.dirCredentials = dirCreds;
    this.fleetCredentials = fleetCreds;
  }
}

export class KeyStoreRegistry {
  private byPrefix = new Map<string, KeyStore>();
  private configs: KeyStoreConfig[];
  private timer: NodeJS.Timeout | undefined;
  /** Fleet credentials per key store name, as decrypted; kept across reloads (etcd is their source). */
  private fleet = new Map<string, Map<string, FleetSecret>>();

  constructor(
    config: Pick<Config, 'keyStores'>,
    private readonly log: AppLogger,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.configs = [...config.keyStores];
    for (const ks of this.configs) this.byPrefix.set(ks.pathPrefix, new KeyStore(ks, this));
    this.reload();
  }

  /**
   * Hot reload: a new set of key stores (prefixes, keys, credentials, quotas) replaces the old one
   * in one assignment. Requests already running keep the KeyStore they resolved.
   */
  replaceKeyStores(keyStores: readonly KeyStoreConfig[]): void {
    const next = new Map<string, KeyStore>();
    for (const ks of keyStores) next.set(ks.pathPrefix, new KeyStore(ks, this));
    const previous = { byPrefix: this.byPrefix, configs: this.configs };
    this.byPrefix = next;
    this.configs = [...keyStores];
    try {
      this.reload();
    } catch (e) {
      this.byPrefix = previous.byPrefix;
      this.configs = previous.configs;
      throw e;
    }
  }

  all(): KeyStore[] {
    return [...this.byPrefix.values()];
  }

  byName(name: string): KeyStore | undefined {
    return this.all().find((k) => k.name === name);
  }

  // The control plane's live KeyDirectory (src/control/key-directory.ts): it reads the key stores
  // in force now, never a copy taken at start-up.

  names(): string[] {
    return this.all().map((k) => k.name);
  }

  hsmKeyOf(keyStore: string, externalKeyId: string): string | undefined {
    return this.byName(keyStore)?.key(externalKeyId)?.label;
  }

  pathsTo(hsmKey: string): { keyStore: string; externalKeyId: string }[] {
    return this.all().flatMap((ks) => ks.keyList().filter((k) => k.label === hsmKey).map((k) => ({ keyStore: ks.name, externalKeyId: k.externalKeyId })));
  }

  /**
   * Split a request path into its key store and the part after /kms/xks/v1. Every occurrence of
   * /kms/xks/v1 is tried, so a prefix may itself contain any allowed segment.
   */
  match(urlPath: string): { keyStore: KeyStore; rest: string } | undefined {
    let from = 0;
    for (;;) {
      const i = urlPath.indexOf(XKS_API_SUFFIX, from);
      if (i < 0) return undefined;
      const after = urlPath.slice(i + XKS_API_SUFFIX.length);
      if (after === '' || after.startsWith('/')) {
        const ks = this.byPrefix.get(urlPath.slice(0, i));
        if (ks) return { keyStore: ks, rest: after };
      }
      from = i + 1;
    }
  }

  ownerOf(accessKeyId: string): string | undefined {
    return this.all().find((ks) => ks.secretFor(accessKeyId) !== undefined)?.name;
  }

  /**
   * The fleet's credentials (key store -> access key id -> secret), replacing the previous set;
   * used only by key stores with fleetCredentials.
   */
  setFleetCredentials(byKeyStore: ReadonlyMap<string, ReadonlyMap<string, FleetSecret>>): void {
    this.fleet = new Map([...byKeyStore].map(([k, v]) => [k, new Map(v)]));
    this.reload();
  }

  /** When a fleet credential was sealed (its authenticated createdAt): the credential age metric. */
  fleetCreatedAtMs(keyStore: string, accessKeyId: string): number | undefined {
    return this.fleet.get(keyStore)?.get(accessKeyId)?.createdAtMs;
  }

  /** Re-read every credential source. Duplicated access key ids across key stores are refused. */
  reload(): void {
    const loaded = this.configs.map((cfg) => ({
      cfg,
      staticCreds: this.readStatic(cfg),
      dirCreds: cfg.credentialsDir ? this.readCredentialsDir(cfg.name, cfg.credentialsDir) : new Map<string, string>(),
      fleetCreds: new Map(cfg.fleetCredentials ? [...(this.fleet.get(cfg.name) ?? [])].map(([akid, f]) => [akid, f.secret]) : []),
    }));
    const owners = new Map<string, Set<string>>();
    for (const { cfg, staticCreds, dirCreds, fleetCreds } of loaded) {
      for (const akid of [...staticCreds.keys(), ...dirCreds.keys(), ...fleetCreds.keys()]) {
        const set = owners.get(akid) ?? new Set<string>();
        set.add(cfg.name);
        owners.set(akid, set);
      }
    }
    for (const { cfg, staticCreds, dirCreds, fleetCreds } of loaded) {
      for (const [akid, set] of owners) {
        if (set.size < 2 || !set.has(cfg.name)) continue;
        // An access key id must name exactly one secret: refuse it everywhere rather than guess.
        this.log.error('access key id configured in several key stores; refused in all', { accessKeyId: akid, keyStores: [...set] });
        staticCreds.delete(akid);
        dirCreds.delete(akid);
        fleetCreds.delete(akid);
      }
      this.byPrefix.get(cfg.pathPrefix)!.setCredentials(staticCreds, dirCreds, fleetCreds);
    }
  }

  private readStatic(cfg: KeyStoreConfig): Map<string, string> {
    const out = new Map<string, string>();
    for (const c of cfg.credentials) {
      try {
        const secret = readSecret(c.secret, this.env);
        if (!SECRET_RE.test(secret)) throw new Error('secret must be 43-64 characters of A-Za-z0-9+/= (spec Appendix A)');
        out.set(c.accessKeyId, secret);
      } catch (e) {
        this.log.error('credential left out', { keyStore: cfg.name, accessKeyId: c.accessKeyId, reason: (e as Error).message });
      }
    }
    return out;
  }

  private readCredentialsDir(keyStore: string, dir: string): Map<string, string> {
    const out = new Map<string, string>();
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch (e) {
      this.log.error('cannot read credentials folder', { keyStore, dir, code: (e as NodeJS.ErrnoException).code });
      return out;
    }
    for (const name of names) {
      if (!name.endsWith(SECRET_FILE_SUFFIX)) continue;
      const akid = name.slice(0, -SECRET_FILE_SUFFIX.length);
      if (!ACCESS_KEY_ID_RE.test(akid)) {
        this.log.error('credential file name is not a valid access key id; left out', { keyStore, file: name });
        continue;
      }
      try {
        const secret = readSecret({ file: path.join(dir, name) });
        if (!SECRET_RE.test(secret)) throw new Error('not a spec-conformant secret');
        out.set(akid, secret);
      } catch (e) {
        this.log.error('credential file left out', { keyStore, file: name, reason: (e as Error).message });
      }
    }
    return out;
  }

  /** Re-read credential folders periodically (rotation without restart). */
  startReloading(intervalMs: number): void {
    this.stopReloading();
    this.timer = setInterval(() => this.reload(), intervalMs);
    this.timer.unref();
  }

  stopReloading(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
