/**
 * Retiring a key version: destroying it in the HSM, so that every ciphertext it sealed becomes
 * undecryptable for ever (docs/runbook-key-rotation.md, "Retiring a version").
 *
 * It is the one key operation that cannot be undone, so it takes the kill switch's two-person rule:
 * each request is one operator's approval, pending in the control state (the state file, or etcd
 * for a whole fleet) until control.killSwitch.approvalsRequired distinct operators approved the
 * same retirement within the approval window (state-model.ts applyRetireApproval). Only then is the
 * object destroyed, through src/hsm (which checks again, in the session that destroys, that it is
 * not the current version), and audited as key-version.retired with the approvers.
 *
 * Refused before any approval is recorded, and checked again before the destroy:
 * - a version the key does not have;
 * - the current (encrypting) version, and so the original while it is the only one;
 * - a version that decrypted within keyVersions.retireQuietDays (its last decrypt in this proxy's
 *   usage ledger), unless the request says forceRecentUse, which the quorum approves as a
 *   separate change and the audit shows. Without keyVersions.usageDir the last use is unknown, and
 *   only forceRecentUse can retire. In fleet mode the last decrypt of every member counts too
 *   (published to etcd on keyVersions.flushIntervalMs); etcd unreadable: refused (fail closed).
 */
import { ControlError, type Actor } from '../control/state-model';
import type { ControlPlane, RetireApprovalResult } from '../control/control-plane';
import { XksError } from '../errors/xks-error';
import type { HsmBackend } from '../hsm/backend';
import type { KeyVersionManager } from './key-versions';

const DAY_MS = 86_400_000;

export interface RetireRequest {
  /** The HSM label of the key (the configured key's label). */
  keyLabel: string;
  version: number;
  forceRecentUse: boolean;
  by: Actor;
  reason: string;
}

export interface RetireResult extends RetireApprovalResult {
  /** True once the version is destroyed. */
  retired: boolean;
  /** The version's decrypts as counted (this proxy's; in fleet mode also the members' published ones), and the last (ISO 8601; null: none). */
  decrypts: number;
  lastDecrypt: string | null;
  warning: string;
}

export interface KeyRetirementDeps {
  versions: KeyVersionManager;
  hsm: Pick<HsmBackend, 'destroyKeyVersion'>;
  control: Pick<ControlPlane, 'approveRetire'>;
  quietDays: number;
  /** Fleet mode: every member's published decrypts of a version (EtcdEncryptionCounter.decryptsOf). */
  fleetDecrypts?: (label: string, version: number) => Promise<{ nodeId: string; decrypts: number; lastDecryptMs: number }[]>;
  now?: () => number;
}

export function retireWarning(label: string, version: number): string {
  return `retiring version ${version} of key "${label}" destroys it in the HSM: every ciphertext it sealed (the KMS data keys and the data they protect) becomes undecryptable for ever`;
}

export class KeyRetirement {
  private readonly now: () => number;

  constructor(private readonly deps: KeyRetirementDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** One operator's approval; destroys the version when it completes the quorum. */
  async request(r: RetireRequest): Promise<RetireResult> {
    const use = await this.check(r, 'refused');
    const change = { keyLabel: r.keyLabel, version: r.version, forceRecentUse: r.forceRecentUse };
    const out = await this.deps.control.approveRetire(change, r.by, r.reason);
    const base = { ...out, ...use, warning: retireWarning(r.keyLabel, r.version) };
    if (!out.approved) return { ...base, retired: false };
    // The quorum may have taken a while: the version must still be retirable now.
    await this.check(r, `approved by ${out.approvers.join(', ')}, but refused at destruction (nothing was destroyed; the approvals are spent)`);
    try {
      await this.deps.hsm.destroyKeyVersion(r.keyLabel, r.version);
    } catch (e) {
      if (e instanceof XksError && e.errorName === 'InternalException' && e.detail) throw new ControlError('conflict', `approved by ${out.approvers.join(', ')}, but the HSM did not destroy it: ${e.detail}`);
      throw e;
    }
    await this.deps.versions.noteRetired(r.keyLabel, r.version, r.by.operator, [`approved by ${out.approvers.join(', ')}`, r.forceRecentUse ? `force-recent-use (${use.decrypts} decrypts, last ${use.lastDecrypt ?? 'never'})` : undefined, `reason: ${r.reason}`].filter(Boolean).join('; '));
    return { ...base, retired: true };
  }

  private async check(r: RetireRequest, when: string): Promise<{ decrypts: number; lastDecrypt: string | null }> {
    const refuse = (code: ControlError['code'], msg: string): never => {
      throw new ControlError(code, when === 'refused' ? msg : `${msg} (${when})`);
    };
    if (!Number.isSafeInteger(r.version) || r.version < 0) refuse('invalid', 'version must be a whole number, 0 or more');
    const { versions, current } = await this.deps.versions.versionsNow(r.keyLabel);
    if (!versions.includes(r.version)) refuse('not-found', `key "${r.keyLabel}" has no version ${r.version} in the HSM`);
    if (r.version === current) {
      refuse('conflict', r.version === 0 ? `version 0 is the only version of key "${r.keyLabel}": retiring it would destroy the key` : `version ${r.version} is the current (encrypting) version of key "${r.keyLabel}": rotate first (xks-proxy keys rotate)`);
    }
    const ledger = this.deps.versions.ledger;
    const u = ledger.usageOf(r.keyLabel).get(r.version);
    let lastMs = u?.lastDecryptMs;
    let decrypts = u?.decrypts ?? 0;
    let where = 'on this proxy';
    if (this.deps.fleetDecrypts) {
      let members: { nodeId: string; decrypts: number; lastDecryptMs: number }[];
      try {
        members = await this.deps.fleetDecrypts(r.keyLabel, r.version);
      } catch (e) {
        if (r.forceRecentUse) members = [];
        else throw new ControlError('conflict', `the fleet's decrypt counts cannot be read, so the last use of version ${r.version} of key "${r.keyLabel}" is unknown (${e instanceof XksError ? e.detail : (e as Error).message}); try again, or approve with forceRecentUse`);
      }
      const newest = members[0];
      if (newest && newest.lastDecryptMs > (lastMs ?? -1)) {
        lastMs = newest.lastDecryptMs;
        where = `on member ${newest.nodeId}`;
      }
      decrypts = Math.max(decrypts, members.reduce((n, m) => n + m.decrypts, 0));
    }
    const use = { decrypts, lastDecrypt: lastMs === undefined ? null : new Date(lastMs).toISOString() };
    if (!r.forceRecentUse && this.deps.quietDays > 0) {
      if (!ledger.persistent) refuse('conflict', `keyVersions.usageDir is not set, so when version ${r.version} of key "${r.keyLabel}" last decrypted is unknown; retiring it needs forceRecentUse (--force-recent-use)`);
      if (lastMs !== undefined && this.now() - lastMs < this.deps.quietDays * DAY_MS) {
        refuse('conflict', `version ${r.version} of key "${r.keyLabel}" decrypted ${use.decrypts} times, the last at ${use.lastDecrypt} ${where}, within keyVersions.retireQuietDays (${this.deps.quietDays} days): its ciphertexts are still read. Wait, or approve with forceRecentUse (--force-recent-use)`);
      }
    }
    return use;
  }
}
