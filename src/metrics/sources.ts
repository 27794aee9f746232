/**
 * Scrape-time sources that need the configuration: SigV4 credential ages. Operators alarm on old
 * credentials as KMS does on its side; the age is the mtime of the credential's secret file
 * (written once by `credentials new`), or for a fleet credential the creation time sealed with it
 * (authenticated by its AAD). Credentials whose secret comes from an env var have no known age and
 * are left out. Only credentials the registry actually loaded are listed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SECRET_FILE_SUFFIX, type KeyStoreRegistry } from '../auth/key-stores';
import type { Config } from '../config/schema';
import { AuditLog } from '../audit/audit-log';
import type { HsmBackend } from '../hsm/backend';
import type { HealthMonitor } from '../xks/health-monitor';
import type { CredentialAge, MeterSources } from './prom-meter';

export function credentialAges(keyStores: Config['keyStores'], registry: KeyStoreRegistry): CredentialAge[] {
  const out: CredentialAge[] = [];
  for (const cfg of keyStores) {
    const active = new Set(registry.byName(cfg.name)?.accessKeyIds() ?? []);
    const files = new Map<string, string>();
    for (const c of cfg.credentials) if (c.secret.file !== undefined) files.set(c.accessKeyId, c.secret.file);
    if (cfg.credentialsDir !== undefined) for (const akid of active) if (!files.has(akid)) files.set(akid, path.join(cfg.credentialsDir, akid + SECRET_FILE_SUFFIX));
    for (const [akid, file] of files) {
      if (!active.has(akid)) continue;
      try {
        out.push({ keyStore: cfg.name, accessKeyId: akid, createdAtMs: fs.statSync(file).mtimeMs });
      } catch {
        // Gone since the last reload: the next reload drops it from the registry too.
      }
    }
    for (const akid of registry.byName(cfg.name)?.fleetAccessKeyIds() ?? []) {
      const createdAtMs = registry.fleetCreatedAtMs(cfg.name, akid);
      if (createdAtMs !== undefined && !files.has(akid)) out.push({ keyStore: cfg.name, accessKeyId: akid, createdAtMs });
    }
  }
  return out;
}

/** Everything the meter reads at scrape time, from the proxy's parts. */
export function proxySources(parts: {
  config: Readonly<Config>;
  registry: KeyStoreRegistry;
  hsm: Pick<HsmBackend, 'poolStats' | 'callStats'>;
  health: Pick<HealthMonitor, 'cached'>;
  /** The request log; its audit counters are read when it is the audit log. */
  requestLog?: unknown;
}): MeterSources {
  const { config, registry, hsm, health } = parts;
  const audit = parts.requestLog instanceof AuditLog ? parts.requestLog : undefined;
  return {
    keyStores: config.keyStores.map((k) => k.name),
    pool: () => hsm.poolStats(),
    poolMax: config.hsm.pool.size,
    hsmCalls: () => hsm.callStats?.(),
    health: () => health.cached(),
    tlsCertFile: config.server.plainHttp ? undefined : config.server.tls?.certFile,
    credentials: () => credentialAges(config.keyStores, registry),
    knownKey: (keyStore, id) => registry.byName(keyStore)?.key(id) !== undefined,
    ...(audit ? { audit: () => audit.stats } : {}),
  };
}
