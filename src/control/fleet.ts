/**
 * Fleet membership in etcd (docs/fleet.md): one lease per live proxy, holding
 * `<prefix>members/<nodeId>` = { nodeId, version, address, startedAt, appliedRevision, health }.
 * A member that stops refreshing its lease (crash, partition) leaves the fleet when the lease
 * expires; the lease TTL is longer than the staleness bound, so a member cut off from etcd fails
 * closed before an engage stops waiting for it.
 *
 * Acknowledgements: each member writes the control revision it has applied (and drained) into its
 * record; an engage waits until every live member's record reaches the engage's revision, or
 * until ackTimeoutMs, and names the members that did not acknowledge.
 *
 * The admin token replay set lives here too: `<prefix>jti/<sha256(kid, jti)>`, created in a
 * transaction only if absent (one-time use fleet-wide), on a lease that expires with the token.
 */
import crypto from 'node:crypto';
import type { Etcd3, Lease, Watcher } from 'etcd3';
import type { AppLogger } from '../log/logger';
import type { FleetAcks } from './control-plane';
import { withDeadline } from './etcd-client';
import type { EtcdControlStore } from './etcd-store';

/** How long recording an admin token id may take before the token is refused (503). */
const JTI_DEADLINE_MS = 5000;
/** Pause between attempts (a failed member is skipped by the client on the next call). */
const JTI_RETRY_MS = 200;
/** Following the member list again after its watch failed. */
const REFOLLOW_MS = 500;

export interface MemberRecord {
  nodeId: string;
  version: string;
  address: string;
  startedAt: string;
  /** The newest control revision this member has applied. */
  appliedRevision: number;
  /** The state it holds verified (store id, generation: its rollback floor; repair stays above it). */
  storeId?: string;
  stateGeneration?: number;
  /** The member's last deep health check (GetHealthStatus's ACTIVE/DEGRADED/UNAVAILABLE). */
  health: string;
  /** The member could not confirm the control state (it refuses every call). */
  stale: boolean;
  /**
   * When it last confirmed the control state (watch up, lease held, a quorum read answered), by its
   * clock; `fleet status` shows the time since as the member's staleness. Refreshed with the health
   * (about every second) while it confirms; a member cut off from etcd cannot write, so its
   * staleness grows until its lease expires.
   */
  confirmedAt?: string;
  updatedAt: string;
  /**
   * The proxy this member is part of: with server.workers > 1 each worker is a member of its own
   * (`<proxy>#w<N>`, so that an engage waits for every worker's acknowledgement) and the primary one
   * more (`<proxy>`, its admin API); xksProxyFleetSize counts proxies, not processes. Absent in
   * records of older members: the node id then names the proxy.
   */
  proxy?: string;
}

export interface FleetOptions {
  prefix: string;
  nodeId: string;
  /** The proxy this member belongs to (MemberRecord.proxy); default: the node id. */
  proxy?: string;
  version: string;
  address: string;
  leaseTtlSeconds: number;
  ackTimeoutMs: number;
  log: AppLogger;
  now?: () => number;
}

export class EtcdFleet {
  private readonly membersPrefix: string;
  private readonly jtiPrefix: string;
  private readonly now: () => number;
  private lease: Lease | undefined;
  private watcher: Watcher | undefined;
  private readonly members = new Map<string, MemberRecord>();
  private readonly listeners = new Set<() => void>();
  private self: MemberRecord;
  private writing: Promise<void> = Promise.resolve();
  private regrant: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly store: EtcdControlStore,
    private readonly o: FleetOptions,
  ) {
    this.membersPrefix = `${o.prefix}members/`;
    this.jtiPrefix = `${o.prefix}jti/`;
    this.now = o.now ?? Date.now;
    const at = new Date(this.now()).toISOString();
    this.self = { nodeId: o.nodeId, proxy: o.proxy ?? o.nodeId, version: o.version, address: o.address, startedAt: at, appliedRevision: 0, health: 'UNKNOWN', stale: false, updatedAt: at };
  }

  get nodeId(): string {
    return this.o.nodeId;
  }

  /** Joins the fleet (lease + record) and follows the other members. */
  async start(): Promise<void> {
    // A retried start (etcd went away half-way) keeps the lease it already has.
    if (!this.lease) await this.join();
    await this.follow();
  }

  /** The member list as of now, then its changes through a watch from the next revision. */
  private async follow(): Promise<void> {
    await this.watcher?.cancel().catch(() => undefined);
    this.watcher = undefined;
    const base = await this.client.getAll().prefix(this.membersPrefix).exec();
    // Replaced in one step (never an empty list meanwhile: an engage would count no one missing).
    const names = new Set(base.kvs.map((kv) => kv.key.toString().slice(this.membersPrefix.length)));
    for (const name of [...this.members.keys()]) if (!names.has(name)) this.members.delete(name);
    for (const kv of base.kvs) this.apply(kv.key.toString(), kv.value.toString());
    const w = await this.client.watch().prefix(this.membersPrefix).startRevision(String(Number(base.header.revision) + 1)).create();
    this.watcher = w;
    w.on('put', (kv) => this.apply(kv.key.toString(), kv.value.toString()));
    w.on('delete', (kv) => {
      this.members.delete(kv.key.toString().slice(this.membersPrefix.length));
      this.notify();
    });
    // etcd cancelled the watch (e.g. its resume revision was compacted): the client drops it for
    // good, and engages would go on waiting for departed members and miss new ones. Follow anew.
    w.on('error', (e) => {
      if (this.watcher !== w) return;
      this.o.log.warn('the watch on the fleet members failed; following them anew', { reason: e.message });
      this.watcher = undefined;
      void w.cancel().catch(() => undefined);
      this.refollow();
    });
  }

  private refollow(): void {
    if (this.closed) return;
    const t = setTimeout(() => void this.follow().catch(() => this.refollow()), REFOLLOW_MS);
    t.unref();
  }

  private async join(): Promise<void> {
    const lease = this.client.lease(this.o.leaseTtlSeconds, { autoKeepAlive: true });
    lease.on('lost', (e) => this.onLeaseLost(e.message));
    await withDeadline(lease.grant(), this.o.leaseTtlSeconds * 1000, 'grant the membership lease');
    this.lease = lease;
    await this.writeSelf();
    this.store.setLeaseOk(true);
  }

  private onLeaseLost(why: string): void {
    if (this.closed) return;
    this.o.log.warn('fleet membership lease lost; this member is not confirmed until it rejoins', { nodeId: this.o.nodeId, reason: why });
    this.store.setLeaseOk(false, why);
    this.lease = undefined;
    const retry = () => {
      if (this.closed) return;
      this.join().then(
        () => this.o.log.info('fleet membership lease granted again', { nodeId: this.o.nodeId }),
        () => {
          this.regrant = setTimeout(retry, 500);
          this.regrant.unref();
        },
      );
    };
    retry();
  }

  private apply(key: string, value: string): void {
    try {
      const m = JSON.parse(value) as MemberRecord;
      if (typeof m.nodeId === 'string' && typeof m.appliedRevision === 'number') this.members.set(key.slice(this.membersPrefix.length), m);
    } catch {
      this.o.log.warn('ignoring an unreadable fleet member record', { key });
    }
    this.notify();
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  /** Writes of this member's record go one after the other, each with the newest content. */
  private writeSelf(): Promise<void> {
    const run = this.writing.then(async () => {
      const lease = this.lease;
      if (!lease || this.closed) return;
      this.self = { ...this.self, updatedAt: new Date(this.now()).toISOString() };
      await withDeadline(lease.put(`${this.membersPrefix}${this.o.nodeId}`).value(JSON.stringify(this.self)).exec(), this.o.leaseTtlSeconds * 1000, 'write the member record');
    });
    this.writing = run.catch((e) => {
      this.o.log.warn('cannot write this member record to etcd', { reason: (e as Error).message });
    });
    return run;
  }

  /** This member applied (and drained) `revision`. */
  ack(revision: number | undefined): void {
    if (revision === undefined || revision <= this.self.appliedRevision) return;
    const seen = this.store.seenState();
    this.self = { ...this.self, appliedRevision: revision, ...(seen ? { storeId: seen.storeId, stateGeneration: seen.generation } : {}) };
    void this.writeSelf().catch(() => undefined);
  }

  setHealth(health: string, stale: boolean): void {
    const confirmedAt = new Date(this.store.confirmedAtMs()).toISOString();
    if (health === this.self.health && stale === this.self.stale && confirmedAt === this.self.confirmedAt) return;
    this.self = { ...this.self, health, stale, confirmedAt };
    void this.writeSelf().catch(() => undefined);
  }

  /** The control revision this member has applied. */
  appliedRevision(): number {
    return this.self.appliedRevision;
  }

  /** Live members (records on unexpired leases). */
  list(): MemberRecord[] {
    return [...this.members.values()].sort((a, b) => a.nodeId.localeCompare(b.nodeId));
  }

  /**
   * Proxies with a live member whose deep check is healthy and that serves (not failing closed):
   * a proxy with several workers counts once.
   */
  healthyCount(): number {
    return new Set(this.list().filter((m) => (m.health === 'ACTIVE' || m.health === 'DEGRADED') && !m.stale).map((m) => m.proxy ?? m.nodeId)).size;
  }

  /** Waits until every live member has applied `revision`, or ackTimeoutMs. */
  awaitAcks(revision: number): Promise<FleetAcks> {
    return new Promise((resolve) => {
      const split = (): FleetAcks => {
        const live = this.list();
        return { acknowledged: live.filter((m) => m.appliedRevision >= revision).map((m) => m.nodeId), missing: live.filter((m) => m.appliedRevision < revision).map((m) => m.nodeId) };
      };
      const finish = () => {
        this.listeners.delete(check);
        clearTimeout(timer);
        resolve(split());
      };
      const check = () => {
        if (split().missing.length === 0) finish();
      };
      const timer = setTimeout(finish, this.o.ackTimeoutMs);
      this.listeners.add(check);
      check();
    });
  }

  /**
   * Uses a token id fleet-wide: true the first time, false for a replay. Throws when etcd cannot
   * answer (the caller refuses the token: fail closed).
   */
  async claimJti(id: string, expMs: number): Promise<boolean> {
    // An etcd member that just died can fail one attempt (the client moves to another member on
    // the next call): try again within a bounded time before refusing the token.
    const deadline = this.now() + JTI_DEADLINE_MS;
    for (;;) {
      try {
        return await this.claimJtiOnce(id, expMs, Math.max(500, deadline - this.now()));
      } catch (e) {
        if (this.now() + JTI_RETRY_MS >= deadline) throw e;
        this.o.log.debug('token id not recorded in etcd yet; trying another member', { reason: (e as Error).message });
        await new Promise((r) => setTimeout(r, JTI_RETRY_MS));
      }
    }
  }

  private async claimJtiOnce(id: string, expMs: number, budgetMs: number): Promise<boolean> {
    const key = `${this.jtiPrefix}${crypto.createHash('sha256').update(id).digest('hex')}`;
    const ttl = Math.max(1, Math.ceil((expMs - this.now()) / 1000));
    const lease = this.client.lease(ttl, { autoKeepAlive: false });
    const leaseId = await withDeadline(lease.grant(), budgetMs, 'grant the token lease');
    const res = await withDeadline(this.client.if(key, 'Create', '==', 0).then(this.client.put(key).value(String(expMs)).lease(leaseId)).commit(), budgetMs, 'record the token id');
    if (!res.succeeded) await lease.revoke().catch(() => undefined);
    else lease.release();
    return res.succeeded;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.regrant) clearTimeout(this.regrant);
    const w = this.watcher;
    this.watcher = undefined;
    await w?.cancel().catch(() => undefined);
    // Leave at once (not after the TTL): a stopped member is not waited for.
    await this.lease?.revoke().catch(() => undefined);
  }
}
