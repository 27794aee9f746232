/**
 * Which version of an external key's HSM material Encrypt and Decrypt use, and when a new one is
 * generated (docs/runbook-key-rotation.md).
 *
 * - The versions live in the HSM (src/hsm/key-versions.ts), read per key and cached; the cache is
 *   read again every keyVersions.rescanIntervalMs, after a rotation by this process, and when a
 *   Decrypt names a version the cache does not know. A rotation by another proxy on the same HSM
 *   is therefore used for Encrypt within rescanIntervalMs and for Decrypt at once.
 * - Encrypt uses the highest version and names it in ciphertextMetadata (version-metadata.ts);
 *   version 0 (never rotated) gets no metadata, exactly as before key versions existed.
 * - Older versions only decrypt.
 * - Every encryption is counted before it happens (usage-ledger.ts); at the rotation threshold a
 *   new version is generated (keyVersions.autoRotate), and at keyVersions.encryptionLimit Encrypt
 *   fails rather than exceed it.
 */
import type { ExternalKeyEntry } from '../auth/key-stores';
import { XksError } from '../errors/xks-error';
import type { HsmBackend } from '../hsm/backend';
import type { KeyVersionObject } from '../hsm/key-versions';
import type { AuditSink } from '../audit/records';
import type { AppLogger } from '../log/logger';
import type { KeyVersionsConfig } from './key-versions-config';
import { UsageLedger, type VersionUsage } from './usage-ledger';
import { decodeVersionMetadata, encodeVersionMetadata } from './version-metadata';

const DAY_MS = 86_400_000;
/** After a failed automatic rotation, the next attempt waits this long (the failure is logged). */
const ROTATION_RETRY_MS = 60_000;

interface VersionsSeen {
  versions: KeyVersionObject[];
  current: number;
  /** The original key (version 0) was retired: destroyed, while rotated versions remain. */
  originalGone: boolean;
  readAtMs: number;
}

/** The HSM label of `version` (0: the key's own label), undefined if the key has no such version. */
function hsmLabelOf(label: string, seen: VersionsSeen, version: number): string | undefined {
  return version === 0 ? label : seen.versions.find((v) => v.version === version)?.hsmLabel;
}

export interface EncryptVersion {
  version: number;
  hsmLabel: string;
  /** undefined for version 0. */
  metadata: Buffer | undefined;
}

/** What the metrics and `keys versions` show about one key. */
export interface KeyVersionStatus {
  label: string;
  current: number;
  versions: { version: number; created: string | undefined; usage: VersionUsage }[];
  rotateAtEncryptions: number | undefined;
  encryptionLimit: number;
  rotationFailures: number;
}

export interface KeyVersionEvent {
  keyLabel: string;
  version: number;
  event: 'rotated' | 'observed' | 'rotation-failed' | 'retired';
  detail?: string | undefined;
  /** Who made it, when an operator did (retired: the operator whose approval completed the quorum). */
  by?: string | undefined;
}

/**
 * Every version change a process makes or first sees goes into its audit chain (the single process,
 * and in a cluster the primary for retirements as well as each worker).
 */
export function auditVersionEvents(audit: Pick<AuditSink, 'writeAdmin'>): (e: KeyVersionEvent) => void {
  return (e) =>
    audit.writeAdmin({ operator: e.by ?? 'proxy', via: 'key-versions', action: `key-version.${e.event}`, scope: `hsmkey:${e.keyLabel}`, outcome: e.event === 'rotation-failed' ? 'error' : 'ok', detail: [`version ${e.version}`, e.detail].filter(Boolean).join('; ') });
}

export class KeyVersionManager {
  private readonly seen = new Map<string, VersionsSeen>();
  /** The newest version read for each label, kept across invalidate() to notice a new one. */
  private readonly knownCurrent = new Map<string, number>();
  private readonly reading = new Map<string, Promise<VersionsSeen>>();
  private readonly rotating = new Map<string, Promise<void>>();
  /** Versions this process generated, so that reading them back is not reported as another's rotation. */
  private readonly rotatedHere = new Set<string>();
  /**
   * Told of every version change this process makes or sees (the composition root audits them):
   * 'rotated' here, 'observed' when a newer version made elsewhere (the CLI, another proxy) is
   * first read, 'rotation-failed' when an automatic rotation failed.
   */
  onVersionEvent: ((e: KeyVersionEvent) => void) | undefined;
  private readonly rotationBlockedUntil = new Map<string, number>();
  private readonly rotationFailures = new Map<string, number>();
  /** Keys this process has served, with their rotation settings (for metrics). */
  private readonly served = new Map<string, ExternalKeyEntry>();
  readonly ledger: UsageLedger;
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly hsm: Pick<HsmBackend, 'listKeyVersions' | 'createKeyVersion' | 'describeKey'>,
    private readonly cfg: KeyVersionsConfig,
    private readonly log: AppLogger,
    private readonly now: () => number = Date.now,
  ) {
    this.ledger = new UsageLedger({
      dir: cfg.usageDir,
      reserveBlock: cfg.reserveBlock,
      now,
      onReserveError: (version, cause) => this.log.warn('could not reserve the next block of encryptions in the usage ledger ahead of time; the next Encrypt tries again', { version, reason: (cause as Error).message }),
      onBorrow: (version, n, cause) =>
        this.log.warn('fleet encryption count unreachable: encrypting on one block of this proxy\'s own, added to the fleet count once etcd answers (control.etcd.keepLastKnownMs)', { version, encryptions: n, reason: cause instanceof XksError ? cause.detail : (cause as Error).message }),
    });
  }

  start(): void {
    if (!this.ledger.persistent) this.log.warn('keyVersions.usageDir is not set: encryption counts per key version (outside fleet mode) and decrypt counts are kept in memory only and restart from 0 with the process');
    this.flushTimer = setInterval(() => this.flushQuietly(), this.cfg.flushIntervalMs);
    this.flushTimer.unref();
  }

  async close(): Promise<void> {
    if (this.flushTimer) clearInterval(this.flushTimer);
    await this.rotationsSettled();
    // A block reserved ahead may still be on its way to the ledger file: let it land first.
    await this.ledger.settled();
    this.flushQuietly();
  }

  /** Resolves once the rotations running now have ended (either way). */
  async rotationsSettled(): Promise<void> {
    await Promise.allSettled([...this.rotating.values()]);
  }

  private flushQuietly(): void {
    try {
      this.ledger.flush((e) => this.log.warn('could not publish decrypt counts to the fleet (etcd); the local ledger has them', { error: e instanceof XksError ? e.detail : (e as Error).message }));
    } catch (e) {
      this.log.error('could not write decrypt counts to the key usage ledger', { error: (e as Error).message });
    }
  }

  private async versionsOf(label: string, maxAgeMs: number): Promise<VersionsSeen> {
    const s = this.seen.get(label);
    if (s && this.now() - s.readAtMs < maxAgeMs) return s;
    let r = this.reading.get(label);
    if (!r) {
      const before = this.knownCurrent.get(label);
      r = this.hsm.listKeyVersions(label).then(async (versions) => {
        // Version 0 can only have been retired once rotated versions exist (key-versions.ts destroyKeyVersion).
        const originalGone = versions.length > 0 && (await this.originalMissing(label));
        const v: VersionsSeen = { versions, current: versions.length ? versions[versions.length - 1]!.version : 0, originalGone, readAtMs: this.now() };
        this.seen.set(label, v);
        this.knownCurrent.set(label, v.current);
        if (before !== undefined && v.current > before && !this.rotatedHere.has(`${label}#${v.current}`)) this.onVersionEvent?.({ keyLabel: label, version: v.current, event: 'observed' });
        return v;
      });
      this.reading.set(label, r);
      void r.finally(() => this.reading.delete(label)).catch(() => undefined);
    }
    return r;
  }

  private originalMissing(label: string): Promise<boolean> {
    return this.hsm.describeKey(label).then(
      () => false,
      // Any other failure says nothing about retirement (the HSM call that matters will report it).
      (e: unknown) => e instanceof XksError && e.errorName === 'KeyNotFoundException',
    );
  }

  /**
   * The versions of `label` in the HSM now (read again, not cached): the numbers, ascending (0
   * unless the original was retired), and the current one. For the retirement checks.
   */
  async versionsNow(label: string): Promise<{ versions: number[]; current: number }> {
    const seen = await this.versionsOf(label, 0);
    return { versions: [...(seen.originalGone ? [] : [0]), ...seen.versions.map((v) => v.version)], current: seen.current };
  }

  /**
   * Was `version` of `k` retired (destroyed while other versions of the key remain)? Read from the
   * HSM again: asked when a version's object is not found, e.g. by a proxy whose cached versions
   * predate a retirement made elsewhere. Decrypt then answers InvalidCiphertextException (the
   * ciphertext can never decrypt again), not KeyNotFoundException, which would tell KMS that the
   * whole key is gone.
   */
  async isRetired(k: ExternalKeyEntry, version: number): Promise<boolean> {
    const seen = await this.versionsOf(k.label, 0);
    if (version === 0) return seen.originalGone;
    return seen.versions.length > 0 && !seen.versions.some((v) => v.version === version);
  }

  /** The HSM label of the current version of `k` (GetKeyMetadata, once the original was retired). */
  async currentHsmLabel(k: ExternalKeyEntry): Promise<string> {
    const seen = await this.versionsOf(k.label, this.cfg.rescanIntervalMs);
    return hsmLabelOf(k.label, seen, seen.current) ?? k.label;
  }

  /**
   * Tells the audit that `version` of `label` was destroyed, and reads the versions again now, so
   * that its metric series are gone at the next scrape.
   */
  async noteRetired(label: string, version: number, by: string, detail: string): Promise<void> {
    this.invalidate(label);
    this.onVersionEvent?.({ keyLabel: label, version, event: 'retired', by, detail });
    await this.versionsOf(label, 0).catch(() => undefined);
  }

  /** Forget what was read about `label` (all keys if undefined), e.g. after a config reload. */
  invalidate(label?: string): void {
    if (label === undefined) this.seen.clear();
    else this.seen.delete(label);
  }

  private triggers(k: ExternalKeyEntry): { atEncryptions: number | undefined; everyDays: number | undefined } {
    return { atEncryptions: k.rotation?.atEncryptions ?? this.cfg.rotation.atEncryptions, everyDays: k.rotation?.everyDays ?? this.cfg.rotation.everyDays };
  }

  /** Unix ms the version came into use: CKA_START_DATE for rotated versions, else the ledger's first record. */
  private bornMs(label: string, seen: VersionsSeen, version: number): number | undefined {
    const created = seen.versions.find((v) => v.version === version)?.created;
    if (created) return Date.parse(created);
    return this.ledger.lastKnown(label, version).firstSeenMs;
  }

  private rotationDue(k: ExternalKeyEntry, seen: VersionsSeen): boolean {
    const t = this.triggers(k);
    const used = this.ledger.lastKnown(k.label, seen.current).encryptions;
    if (t.atEncryptions !== undefined && used >= t.atEncryptions) return true;
    if (t.everyDays !== undefined) {
      const born = this.bornMs(k.label, seen, seen.current);
      if (born !== undefined && this.now() - born >= t.everyDays * DAY_MS) return true;
    }
    return false;
  }

  /**
   * Generates the version after `from` unless another process already did (the HSM call is a
   * compare-and-set on the current version), then re-reads the versions. One at a time per key.
   */
  rotate(label: string, from: number): Promise<void> {
    let r = this.rotating.get(label);
    if (!r) {
      r = this.hsm
        .createKeyVersion(label, from)
        .then((v) => {
          this.rotatedHere.add(`${label}#${v}`);
          this.log.info('key rotated: a new version encrypts from now on', { keyLabel: label, version: v });
          this.onVersionEvent?.({ keyLabel: label, version: v, event: 'rotated' });
        })
        .finally(() => {
          this.rotating.delete(label);
          this.invalidate(label);
        });
      this.rotating.set(label, r);
    }
    return r;
  }

  private rotateInBackground(label: string, from: number): void {
    if ((this.rotationBlockedUntil.get(label) ?? 0) > this.now()) return;
    this.rotate(label, from).catch((e) => this.rotationFailed(label, e));
  }

  private rotationFailed(label: string, e: unknown): void {
    this.rotationBlockedUntil.set(label, this.now() + ROTATION_RETRY_MS);
    this.rotationFailures.set(label, (this.rotationFailures.get(label) ?? 0) + 1);
    const detail = e instanceof XksError ? e.detail : (e as Error).message;
    this.log.error('automatic key rotation failed; the current version keeps encrypting up to keyVersions.encryptionLimit', {
      keyLabel: label,
      errorName: e instanceof XksError ? e.errorName : 'Error',
      detail,
    });
    this.onVersionEvent?.({ keyLabel: label, version: this.knownCurrent.get(label) ?? 0, event: 'rotation-failed', detail });
  }

  /** The version Encrypt uses for `k`, its encryption already counted. */
  async forEncrypt(k: ExternalKeyEntry): Promise<EncryptVersion> {
    this.served.set(k.label, k);
    let seen = await this.versionsOf(k.label, this.cfg.rescanIntervalMs);
    if (!(await this.ledger.reserveEncryption(k.label, seen.current, this.cfg.encryptionLimit))) {
      // The hard limit: never encrypt past it. A new version is the only way on.
      if (this.cfg.autoRotate) {
        try {
          await this.rotate(k.label, seen.current);
        } catch (e) {
          this.rotationFailed(k.label, e);
        }
        seen = await this.versionsOf(k.label, 0);
      }
      if (!(await this.ledger.reserveEncryption(k.label, seen.current, this.cfg.encryptionLimit))) {
        throw new XksError(
          'InvalidStateException',
          'The external key has reached its encryption limit and must be rotated by the proxy operator.',
          `version ${seen.current} of key "${k.label}" reached keyVersions.encryptionLimit (${this.cfg.encryptionLimit}); rotate it (xks-proxy keys rotate)`,
        );
      }
    } else if (this.cfg.autoRotate && !this.rotating.has(k.label) && this.rotationDue(k, seen)) {
      // Below the hard limit: this request still uses the current version; the next ones get
      // the new version once it exists.
      this.rotateInBackground(k.label, seen.current);
    }
    return { version: seen.current, hsmLabel: hsmLabelOf(k.label, seen, seen.current)!, metadata: seen.current === 0 ? undefined : encodeVersionMetadata(seen.current) };
  }

  /**
   * The HSM label Decrypt uses for `metadata` (undefined: version 0, the original key).
   * InvalidCiphertextException, with the same public message as a failed tag, when the metadata
   * names a version this key does not have: a caller learns nothing about which versions exist.
   *
   * Metadata that is not ours (no known format byte and length) is version 0: this proxy wrote
   * none before the key's first rotation, so such metadata was written by another proxy on the
   * original key, e.g. the AWS sample proxy's own for a key store migrated from it. It goes into
   * the AAD exactly as received, so the tag still rejects any change to it: nothing forged
   * decrypts, the answer is InvalidCiphertextException as for any other tampering.
   */
  async forDecrypt(k: ExternalKeyEntry, metadata: Buffer | undefined, compatibility: 'spec' | 'aws-sample'): Promise<{ version: number; hsmLabel: string }> {
    this.served.set(k.label, k);
    const named = metadata === undefined ? undefined : decodeVersionMetadata(metadata);
    if (named === undefined) return { version: 0, hsmLabel: k.label };
    let seen = await this.versionsOf(k.label, this.cfg.rescanIntervalMs);
    let hsmLabel = hsmLabelOf(k.label, seen, named);
    // Not known yet: maybe another proxy just rotated. Read the HSM again (concurrent reads of one
    // key share one search). Only SigV4-authenticated callers get here, and a search costs about
    // what the decrypt it replaces would.
    if (hsmLabel === undefined) {
      seen = await this.versionsOf(k.label, 0);
      hsmLabel = hsmLabelOf(k.label, seen, named);
    }
    if (hsmLabel === undefined) {
      // compatibility aws-sample: the sample's own metadata might happen to look like ours; it
      // belongs to the original key (see above).
      if (compatibility === 'aws-sample') return { version: 0, hsmLabel: k.label };
      throw new XksError('InvalidCiphertextException', undefined, `ciphertextMetadata names version ${named}, which key "${k.label}" does not have`);
    }
    return { version: named, hsmLabel };
  }

  recordDecrypt(k: ExternalKeyEntry, version: number): void {
    this.ledger.recordDecrypt(k.label, version);
  }

  /** Status of the keys this process has served (for metrics; no HSM call: cached versions only). */
  status(): KeyVersionStatus[] {
    const out: KeyVersionStatus[] = [];
    for (const [label, k] of this.served) {
      const seen = this.seen.get(label);
      if (!seen) continue;
      out.push(this.describe(k, seen));
    }
    return out;
  }

  /** Status of one key, read from the HSM now (for the CLI). */
  async statusOf(k: ExternalKeyEntry): Promise<KeyVersionStatus> {
    return this.describe(k, await this.versionsOf(k.label, 0));
  }

  private describe(k: ExternalKeyEntry, seen: VersionsSeen): KeyVersionStatus {
    const usage = this.ledger.usageOf(k.label);
    const empty: VersionUsage = { encryptions: 0, decrypts: 0, lastDecryptMs: undefined, firstSeenMs: undefined };
    // A retired version has no series: only what the HSM holds is listed.
    const versions = [...(seen.originalGone ? [] : [{ version: 0, created: undefined as string | undefined }]), ...seen.versions].map((v) => ({ version: v.version, created: v.created, usage: usage.get(v.version) ?? { ...empty } }));
    return { label: k.label, current: seen.current, versions, rotateAtEncryptions: this.triggers(k).atEncryptions, encryptionLimit: this.cfg.encryptionLimit, rotationFailures: this.rotationFailures.get(k.label) ?? 0 };
  }
}
