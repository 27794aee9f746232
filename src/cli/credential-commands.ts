/**
 * `xks-proxy credentials`: SigV4 credentials of a key store (spec Appendix A, "SigV4 credentials
 * rotation"). A key store with credentialsDir keeps them in files on this host; one with
 * fleetCredentials (fleet mode) in etcd, sealed inside the HSM, for every member at once
 * (docs/fleet.md "Credentials across the fleet"). The secret is shown once, in the KMS proxy
 * configuration JSON, and never stored in clear anywhere else.
 */
import fs from 'node:fs';
import os from 'node:os';
import { removeCredential } from '../admin/credentials-admin';
import { kmsProxyConfiguration, listCredentials, newCredential } from '../auth/credentials';
import type { CredentialCipher } from '../auth/credential-envelope';
import { KeyStoreRegistry } from '../auth/key-stores';
import type { LoadedConfig } from '../config/load';
import { readSecret } from '../config/secrets';
import { connectEtcd, normalisePrefix } from '../control/etcd-client';
import { FleetCredentials } from '../control/fleet-credentials';
import { ControlError } from '../control/state-model';
import { openPkcs11Backend } from '../hsm/pkcs11-backend';
import { createSilentLogger } from '../log/logger';

export const CREDENTIALS_USAGE = `Usage:
  xks-proxy credentials new --key-store NAME [--out FILE] [--config FILE]
  xks-proxy credentials remove --key-store NAME --access-key-id AKID [--config FILE]
  xks-proxy credentials list [--json] [--config FILE]

new:    makes a spec-conformant access key id and secret for the key store and prints the KMS
        console proxy configuration JSON (or writes it to --out, mode 0600); the secret is shown
        this once. Where it is kept:
        - keyStores[].fleetCredentials (fleet mode): in etcd, encrypted inside the HSM with
          control.etcd.credentialWrapKeyLabel; every member of the fleet picks it up at once.
        - else keyStores[].credentialsDir: a file (mode 0600) the running proxy picks up without
          a restart.
remove: deletes a fleet or folder credential (every member drops a fleet one at once). Refuses
        the key store's last credential: switch KMS to the new one (UpdateCustomKeyStore) first.
list:   the access key ids of every key store (never the secrets); --json for scripts.`;

/** For `list`, which reads etcd only: nothing is sealed or opened. */
const NO_CIPHER: CredentialCipher = {
  encrypt: () => Promise.reject(new Error('no HSM opened')),
  decrypt: () => Promise.reject(new Error('no HSM opened')),
};

/** The fleet's credentials with the HSM open (hsm: true) or etcd alone. */
async function withFleet<T>(loaded: LoadedConfig, hsm: boolean, fn: (fc: FleetCredentials) => Promise<T>): Promise<T> {
  const e = loaded.config.control?.etcd;
  if (loaded.config.control?.store !== 'etcd' || !e) throw new Error(`${loaded.file}: fleet credentials need control.store: etcd`);
  const backend = hsm ? await openPkcs11Backend({ ...loaded.config.hsm, pool: { ...loaded.config.hsm.pool, size: 1 } }, readSecret(loaded.config.hsm.pin), createSilentLogger()) : undefined;
  const client = connectEtcd(e);
  const fc = new FleetCredentials(client, backend ?? NO_CIPHER, { prefix: normalisePrefix(e.prefix), wrapKeyLabel: e.credentialWrapKeyLabel, nodeId: `${e.nodeId ?? os.hostname()} (cli)`, log: createSilentLogger(), callMs: Math.max(2000, e.maxStalenessMs) });
  try {
    return await fn(fc);
  } finally {
    await fc.close();
    client.close();
    await backend?.close();
  }
}

export async function credentialsCommand(sub: string, loaded: LoadedConfig, flags: Record<string, string | boolean | undefined>, formatTable: (rows: string[][]) => string): Promise<number> {
  const name = flags['key-store'] as string | undefined;
  const ks = name === undefined ? undefined : loaded.config.keyStores.find((k) => k.name === name);
  if ((sub === 'new' || sub === 'remove') && !ks) {
    process.stderr.write(name ? `error: no key store named "${name}" (have: ${loaded.config.keyStores.map((k) => k.name).join(', ')})\n` : `error: --key-store is required\n\n${CREDENTIALS_USAGE}\n`);
    return 2;
  }
  if (sub === 'new' && ks) {
    const outFile = flags.out as string | undefined;
    let json: string;
    if (ks.fleetCredentials) {
      json = await withFleet(loaded, true, async (fc) => {
        const out = await fc.create(ks.name);
        process.stderr.write(`new credential ${out.accessKeyId} for key store "${ks.name}" stored in etcd (${out.key}, revision ${out.revision}), encrypted in the HSM with key "${loaded.config.control!.etcd!.credentialWrapKeyLabel}"; every member of the fleet accepts it now\n`);
        return JSON.stringify(kmsProxyConfiguration(ks.pathPrefix, out.accessKeyId, out.secret), null, 2);
      });
      if (outFile) fs.writeFileSync(outFile, json + '\n', { mode: 0o600 });
    } else {
      const out = newCredential(loaded.config, ks.name, outFile);
      process.stderr.write(`new credential ${out.accessKeyId} for key store "${ks.name}" stored in ${out.secretFile}\n`);
      json = out.kmsConfigJson;
    }
    if (!outFile) process.stdout.write(json + '\n');
    else process.stderr.write(`KMS proxy configuration written to ${outFile}\n`);
    return 0;
  }
  if (sub === 'remove' && ks) {
    const akid = flags['access-key-id'] as string | undefined;
    if (!akid) {
      process.stderr.write(`error: --access-key-id is required\n\n${CREDENTIALS_USAGE}\n`);
      return 2;
    }
    // This host's view of the key store: inline and folder credentials, plus (fleet) those it can open.
    const registry = new KeyStoreRegistry(loaded.config, createSilentLogger());
    const remove = async (fc?: FleetCredentials) => {
      if (fc) await fc.load(registry);
      return removeCredential(loaded.config, registry, ks.name, akid, fc);
    };
    try {
      const out = ks.fleetCredentials ? await withFleet(loaded, true, remove) : await remove();
      process.stderr.write(`removed credential ${akid} of key store "${ks.name}"${out.revision !== undefined ? ` from etcd (revision ${out.revision}); every member drops it now` : ''}; remaining: ${out.remaining.join(', ')}\n`);
      return 0;
    } catch (e) {
      if (!(e instanceof ControlError)) throw e;
      process.stderr.write(`error: ${e.message}\n`);
      return 1;
    }
  }
  if (sub === 'list') {
    const rows = listCredentials(loaded.config);
    if (loaded.config.keyStores.some((k) => k.fleetCredentials)) {
      const fleet = await withFleet(loaded, false, (fc) => fc.list());
      for (const row of rows) {
        if (!loaded.config.keyStores.find((k) => k.name === row.keyStore)?.fleetCredentials) continue;
        row.accessKeyIds.push(...fleet.filter((f) => f.keyStore === row.keyStore).map((f) => f.accessKeyId));
      }
    }
    if (flags.json) process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    else process.stdout.write(formatTable([['KEY STORE', 'URI PATH', 'ACCESS KEY IDS'], ...rows.map((row) => [row.keyStore, row.uriPath, row.accessKeyIds.join(',') || '(none)'])]));
    return 0;
  }
  process.stderr.write(`error: unknown subcommand ${sub}\n\n${CREDENTIALS_USAGE}\n`);
  return 2;
}
