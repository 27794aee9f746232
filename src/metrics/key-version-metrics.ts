/**
 * Key version gauges (src/xks/key-versions.ts), read at scrape time. Label values stay bounded:
 * `key` is the HSM label of a key configured in a key store, `version` one of the versions that
 * key has in the HSM (a retired version's series disappears with it).
 *
 * With server.workers the primary aggregates by max: the counts come from one ledger file that
 * every worker reads, so each worker reports (nearly) the same total and a sum would multiply it.
 */
import { Gauge, type Registry } from 'prom-client';
import type { KeyVersionStatus } from '../xks/key-versions';

export function registerKeyVersionMetrics(registers: Registry[], source: () => readonly KeyVersionStatus[] | undefined): void {
  const each = (g: Gauge<string>, f: (s: KeyVersionStatus) => void): void => {
    g.reset();
    for (const s of source() ?? []) f(s);
  };
  new Gauge({
    name: 'xks_key_version_current', help: 'The key version Encrypt uses (0: never rotated), by HSM key label.', labelNames: ['key'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => this.set({ key: s.label }, s.current));
    },
  });
  new Gauge({
    name: 'xks_key_version_encryptions', help: 'Encryptions counted per key version (counted before use, in blocks: an upper bound): this proxy\'s, or in fleet mode (control.store etcd) the fleet\'s as of its last reservation. Survives restarts with keyVersions.usageDir or etcd.', labelNames: ['key', 'version'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => s.versions.forEach((v) => this.set({ key: s.label, version: String(v.version) }, v.usage.encryptions)));
    },
  });
  new Gauge({
    name: 'xks_key_version_decrypts', help: 'Decrypts by this proxy per key version. Flat for an old version: its ciphertexts are no longer read (see the rotation runbook before retiring it).', labelNames: ['key', 'version'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => s.versions.forEach((v) => this.set({ key: s.label, version: String(v.version) }, v.usage.decrypts)));
    },
  });
  new Gauge({
    name: 'xks_key_current_version_encryptions', help: 'Encryptions counted for the current version of the key.', labelNames: ['key'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => this.set({ key: s.label }, s.versions.find((v) => v.version === s.current)?.usage.encryptions ?? 0));
    },
  });
  new Gauge({
    name: 'xks_key_rotation_threshold_encryptions', help: 'Encryption count at which the current version is rotated (keyVersions.rotation.atEncryptions or the key\'s own).', labelNames: ['key'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => {
        if (s.rotateAtEncryptions !== undefined) this.set({ key: s.label }, s.rotateAtEncryptions);
      });
    },
  });
  new Gauge({
    name: 'xks_key_encryption_limit', help: 'Encryptions one version never exceeds (keyVersions.encryptionLimit; NIST SP 800-38D: 2^32 with random IVs). At it, Encrypt fails unless a new version is generated.', labelNames: ['key'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => this.set({ key: s.label }, s.encryptionLimit));
    },
  });
  new Gauge({
    name: 'xks_key_rotation_failures', help: 'Automatic rotations that failed since the proxy started, by key.', labelNames: ['key'], registers, aggregator: 'max',
    collect() {
      each(this, (s) => this.set({ key: s.label }, s.rotationFailures));
    },
  });
}
