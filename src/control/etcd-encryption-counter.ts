/**
 * Fleet mode: the encryption count of each key version, shared by every proxy of the fleet in etcd
 * (src/xks/usage-ledger.ts SharedEncryptionCounter). Every proxy encrypts under the same HSM key,
 * and the AES-GCM limit for random 96-bit IVs (NIST SP 800-38D section 8.3: 2^32 invocations) is
 * per key, not per host: each block of encryptions is reserved here before any of it is spent.
 *
 * One key per key version, `<prefix>key-usage/<first 32 hex of SHA-256(label)>/v<version>`, whose
 * value is the decimal count of encryptions reserved by the whole fleet. A reservation reads it and
 * writes count + n in a transaction that compares the key's mod revision with the one read (or
 * that it does not exist yet), as the control state's writes do, and tries again on a conflict:
 * concurrent reservations by several proxies never lose one, and the count never passes the limit.
 *
 * Decrypts: each member publishes, on the ledger's flush interval, its decrypts of a version since
 * it started and the time of the last one, under `<version key>.decrypts/<nodeId>`, so that the
 * retirement quiet period (src/xks/key-retirement.ts) sees the last use anywhere in the fleet.
 *
 * The count is not authenticated (the control state is, by the HSM); a rollback by someone who may
 * write to etcd is caught as far as this member saw: the count used is never below the highest this
 * member has read or written, and a lower value is logged as an error and written over.
 */
import crypto from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import { XksError } from '../errors/xks-error';
import type { AppLogger } from '../log/logger';
import type { SharedEncryptionCounter } from '../xks/usage-ledger';
import { withDeadline } from './etcd-client';

const MAX_ATTEMPTS = 20;

export class EtcdEncryptionCounter implements SharedEncryptionCounter {
  /** key -> the highest count this member has read or written. */
  private readonly floor = new Map<string, number>();

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly callMs: number,
    private readonly log: AppLogger,
    /** control.etcd.keepLastKnownMs > 0: the operator chose availability during an etcd outage. */
    readonly borrowWhenUnreachable = false,
    /** This member's node id (its decrypt record); undefined: a reader (the CLI). */
    private readonly nodeId?: string,
  ) {}

  async noteDecrypts(label: string, version: number, decrypts: number, lastDecryptMs: number): Promise<void> {
    if (this.nodeId === undefined) return;
    await withDeadline(this.client.put(`${this.keyOf(label, version)}.decrypts/${this.nodeId}`).value(JSON.stringify({ decrypts, lastDecryptMs })).exec(), this.callMs, 'publish decrypt counts');
  }

  /** Every member's last decrypt of `version` (newest first), as they published it. */
  async decryptsOf(label: string, version: number): Promise<{ nodeId: string; decrypts: number; lastDecryptMs: number }[]> {
    const prefix = `${this.keyOf(label, version)}.decrypts/`;
    const all = await withDeadline(this.client.getAll().prefix(prefix).strings(), this.callMs, 'read the fleet decrypt counts');
    const out: { nodeId: string; decrypts: number; lastDecryptMs: number }[] = [];
    for (const [k, v] of Object.entries(all)) {
      try {
        const d = JSON.parse(v) as { decrypts?: unknown; lastDecryptMs?: unknown };
        if (typeof d.decrypts === 'number' && typeof d.lastDecryptMs === 'number') out.push({ nodeId: k.slice(prefix.length), decrypts: d.decrypts, lastDecryptMs: d.lastDecryptMs });
      } catch {
        // Not a record of ours: it says nothing about a decrypt.
      }
    }
    return out.sort((a, b) => b.lastDecryptMs - a.lastDecryptMs);
  }

  get location(): string {
    return `etcd ${this.prefix}key-usage/`;
  }

  keyOf(label: string, version: number): string {
    return `${this.prefix}key-usage/${crypto.createHash('sha256').update(label, 'utf8').digest('hex').slice(0, 32)}/v${version}`;
  }

  /** The fleet's count for `version` of `label` now (undefined: none reserved yet), for `keys versions`. */
  async current(label: string, version: number): Promise<number | undefined> {
    const v = await withDeadline(this.client.get(this.keyOf(label, version)).string(), this.callMs, 'read the fleet encryption count');
    return v === null ? undefined : Number(v);
  }

  async reserve(label: string, version: number, want: number, limit: number, seed: number): Promise<{ before: number; granted: number }> {
    const key = this.keyOf(label, version);
    try {
      for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
        const res = await withDeadline(this.client.get(key).exec(), this.callMs, 'read the fleet encryption count');
        const kv = res.kvs[0];
        const stored = kv ? Number(kv.value.toString('utf8')) : seed;
        const floor = this.floor.get(key) ?? 0;
        if (!Number.isSafeInteger(stored) || stored < floor) {
          this.log.error('fleet encryption count in etcd is lower than this proxy already saw, or unreadable (rolled back or changed outside the proxies?); counting on from the higher value', { keyLabel: label, version, stored: kv?.value.toString('utf8').slice(0, 32), seen: floor });
        }
        const before = Math.max(Number.isSafeInteger(stored) ? stored : 0, floor);
        this.floor.set(key, before);
        if (before >= limit) return { before, granted: 0 };
        const granted = Math.min(want, limit - before);
        const txn = kv ? this.client.if(key, 'Mod', '==', kv.mod_revision) : this.client.if(key, 'Create', '==', 0);
        const out = await withDeadline(txn.then(this.client.put(key).value(String(before + granted))).commit(), this.callMs, 'reserve encryptions in the fleet count');
        if (out.succeeded) {
          this.floor.set(key, before + granted);
          return { before, granted };
        }
        // Another proxy reserved between our read and our write: read its count and try again.
      }
      throw new Error(`the count kept changing under this reservation (${MAX_ATTEMPTS} attempts)`);
    } catch (e) {
      // No reservation, no encryption: the fleet total is the one guarantee against the GCM limit.
      throw new XksError('InternalException', undefined, `cannot reserve encryptions of version ${version} of key "${label}" in the fleet count (${this.location}): ${(e as Error).message}`);
    }
  }
}
