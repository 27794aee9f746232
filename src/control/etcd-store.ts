/**
 * The fleet's control store in etcd v3 (docs/fleet.md). The whole control body (blocks, approvals,
 * policies, history) is one value, `<prefix>control/state`, in the same authenticated envelope as
 * the file store's state.json: an HMAC-SHA256 made inside the HSM over the canonical JSON and a
 * generation that grows by one per write.
 *
 * Why the HSM MAC on top of etcd's TLS and authentication: etcd protects the state in transit and
 * from clients without etcd credentials, but whoever holds etcd credentials (an etcd operator, a
 * leaked client certificate) could otherwise write a state that lifts every block. The members of
 * a fleet share the HSM keys anyway (KMS's ciphertexts must decrypt on every member), so they share
 * the MAC key too; a state that does not verify is tampering: failing closed, logged and audited.
 * A member also refuses a generation below the highest it has seen (rollback by a credential
 * holder); a member that starts after such a rollback cannot tell (documented in docs/fleet.md).
 *
 * Writes are transactions that compare the key's mod revision with the one read (or that the key
 * does not exist yet): two members changing the state at once never lose an update; the loser
 * reads again and re-applies its change to the winner's state.
 *
 * Freshness: a watch on the key applies changes (the hot path only reads the control plane's
 * snapshot). A heartbeat makes a linearizable (quorum) read of the key every quarter of
 * maxStalenessMs: it confirms that this member still talks to a majority and that the watch has
 * not missed a revision. While the watch is down, the heartbeat fails, or the membership lease is
 * lost, the state is unconfirmed; once that has lasted maxStalenessMs (+ keepLastKnownMs), the
 * store reports it stale and the control plane fails closed, until it is confirmed again.
 */
import crypto from 'node:crypto';
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { AppLogger } from '../log/logger';
import type { ControlStore, StoreWatchHandlers } from './control-store';
import { withDeadline } from './etcd-client';
import { ControlError, emptyState, type StateBody } from './state-model';
import type { StateAuthenticator } from './state-auth';
import { serializeState, verifyStateText, type ReadResult, type StoredState } from './state-store';

export interface EtcdStoreOptions {
  prefix: string;
  maxStalenessMs: number;
  keepLastKnownMs: number;
  log: AppLogger;
  now?: () => number;
}

/** Concurrent writers: attempts before a change gives up (each loser re-reads the winner's state). */
const MAX_TXN_ATTEMPTS = 32;

export class EtcdControlStore implements ControlStore {
  readonly kind = 'etcd' as const;
  readonly location: string;
  readonly stateKey: string;
  private readonly markerKey: string;
  private readonly now: () => number;
  /** The highest verified generation seen (rollback check) and its store id. */
  private seen: { storeId: string; generation: number } | undefined;
  /** The mod revision of the newest state read or written. */
  private lastRevision = 0;
  private watcher: Watcher | undefined;
  private watchUp = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private beating = false;
  /** Until this member has joined the fleet, engages elsewhere do not wait for it. */
  private leaseOk = false;
  private lastProblem = 'this member has not joined the fleet yet';
  private confirmedAt: number;
  private staleReported = false;
  /** Past maxStalenessMs but within keepLastKnownMs: said once per episode. */
  private keepingLastKnown = false;
  private handlers: StoreWatchHandlers | undefined;
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly auth: StateAuthenticator,
    private readonly o: EtcdStoreOptions,
  ) {
    this.stateKey = `${o.prefix}control/state`;
    this.markerKey = `${o.prefix}control/initialised`;
    this.location = `etcd key ${this.stateKey}`;
    this.now = o.now ?? Date.now;
    this.confirmedAt = this.now();
  }

  /** Bound for one etcd call made by the control plane (never on the request path). */
  private get callMs(): number {
    return Math.max(500, Math.floor(this.o.maxStalenessMs / 2));
  }

  async initIfFresh(nowMs: number): Promise<void> {
    try {
      const r = await this.read();
      if (r.ok || !r.fresh) return;
      const { text } = await serializeState(this.auth, { storeId: crypto.randomBytes(16).toString('hex'), generation: 1, writtenAt: new Date(nowMs).toISOString(), body: emptyState() });
      // Both keys absent, or another member initialised the fleet first (then nothing to do).
      await withDeadline(
        this.client
          .if(this.stateKey, 'Create', '==', 0)
          .and(this.markerKey, 'Create', '==', 0)
          .then(this.client.put(this.stateKey).value(text), this.client.put(this.markerKey).value(`initialised ${new Date(nowMs).toISOString()}`))
          .commit(),
        this.callMs,
        'initialise the control state',
      );
    } catch (e) {
      this.o.log.error('the control state in etcd cannot be initialised; failing closed', { key: this.stateKey, reason: (e as Error).message });
    }
  }

  async read(): Promise<ReadResult> {
    // The floor is what was seen before the read was sent: etcd reads are linearizable, so a read
    // sent after generation N was seen returns N or newer, while one sent earlier may legitimately
    // return an older state (concurrent calls answer in any order): that is not a rollback.
    const floor = this.seen;
    let kv: IKeyValue | undefined;
    try {
      kv = (await withDeadline(this.client.get(this.stateKey).exec(), this.callMs, 'read the control state')).kvs[0];
      if (!kv) {
        const marker = await withDeadline(this.client.get(this.markerKey).exec(), this.callMs, 'read the control state marker');
        if (marker.kvs.length === 0) return { ok: false, fresh: true };
        return { ok: false, fresh: false, tamper: true, reason: `${this.location} is missing, but the fleet was initialised (${this.markerKey} exists): deleted outside the proxy` };
      }
    } catch (e) {
      return { ok: false, fresh: false, tamper: false, reason: `cannot read ${this.location}: ${(e as Error).message}` };
    }
    return this.verify(kv, floor);
  }

  private async verify(kv: IKeyValue, floor: { storeId: string; generation: number } | undefined): Promise<ReadResult> {
    const text = kv.value.toString('utf8');
    let claimed: string | undefined;
    try {
      claimed = (JSON.parse(text) as { storeId?: unknown }).storeId as string | undefined;
    } catch {
      /* verifyStateText names it */
    }
    // The anchor is what this member has seen: the first state it reads names its store.
    const anchor = { storeId: floor?.storeId ?? (typeof claimed === 'string' ? claimed : ''), generation: floor?.generation ?? 0 };
    const r = await verifyStateText(this.auth, text, anchor, this.location);
    if (!r.ok) return r.fresh ? r : { ...r, reason: r.reason.replace('recorded in the HSM (an old file was put back: rollback)', 'already seen by this member (an old value was put back: rollback)') };
    const revision = Number(kv.mod_revision);
    this.noteSeen(r.state.storeId, r.state.generation, revision);
    return { ok: true, state: { ...r.state, revision }, ahead: false };
  }

  private noteSeen(storeId: string, generation: number, revision: number): void {
    if (!this.seen || generation > this.seen.generation) this.seen = { storeId, generation };
    if (revision > this.lastRevision) this.lastRevision = revision;
  }

  async mutate<R>(f: (body: StateBody) => { body: StateBody; result: R }, nowMs: () => number): Promise<{ state: StoredState; result: R }> {
    for (let attempt = 1; attempt <= MAX_TXN_ATTEMPTS; attempt++) {
      const cur = await this.read();
      if (!cur.ok && !cur.fresh) throw new ControlError('fail-closed', `state not trusted, changes refused: ${cur.reason}`);
      const prev = cur.ok ? cur.state : undefined;
      const { body, result } = f(prev?.body ?? emptyState());
      const storeId = prev?.storeId ?? crypto.randomBytes(16).toString('hex');
      const generation = (prev?.generation ?? 0) + 1;
      const writtenAt = new Date(nowMs()).toISOString();
      const { text, state } = await serializeState(this.auth, { storeId, generation, writtenAt, body });
      const txn = prev ? this.client.if(this.stateKey, 'Mod', '==', prev.revision ?? 0) : this.client.if(this.stateKey, 'Create', '==', 0).and(this.markerKey, 'Create', '==', 0);
      const puts = prev ? [this.client.put(this.stateKey).value(text)] : [this.client.put(this.stateKey).value(text), this.client.put(this.markerKey).value(`initialised ${writtenAt}`)];
      const res = await withDeadline(txn.then(...puts).commit(), this.callMs, 'write the control state');
      if (res.succeeded) {
        const revision = Number(res.header.revision);
        this.noteSeen(storeId, generation, revision);
        return { state: { ...state, revision }, result };
      }
      // Another member wrote between our read and our write: read its state and apply ours to it.
      this.o.log.debug('control state changed concurrently; retrying the change on the newer state', { attempt });
    }
    throw new ControlError('conflict', `the control state kept changing under this change (${MAX_TXN_ATTEMPTS} attempts); try again`);
  }

  watch(h: StoreWatchHandlers): void {
    this.handlers = h;
    void this.openWatch();
    const tick = Math.max(50, Math.floor(this.o.maxStalenessMs / 4));
    this.heartbeat = setInterval(() => {
      // Judged on every tick, not when a read ends: a read that hangs must not delay failing closed.
      this.judge();
      void this.beat();
    }, tick);
    this.heartbeat.unref();
  }

  private async openWatch(): Promise<void> {
    try {
      const w = await this.client.watch().key(this.stateKey).create();
      if (this.closed) {
        void w.cancel();
        return;
      }
      this.watcher = w;
      this.watchUp = true;
      const changed = (origin: string) => this.handlers?.changed(origin);
      w.on('put', () => changed('etcd-watch'));
      w.on('delete', () => changed('etcd-watch'));
      w.on('connected', () => {
        this.watchUp = true;
        changed('etcd-watch-reconnected');
      });
      w.on('disconnected', (e) => {
        this.watchUp = false;
        this.lastProblem = `the watch on ${this.stateKey} is disconnected (${e.message})`;
      });
      w.on('error', (e) => {
        this.watchUp = false;
        this.lastProblem = `the watch on ${this.stateKey} failed (${e.message})`;
      });
      // A change between the first read and the watch's start: read again.
      changed('etcd-watch-started');
    } catch (e) {
      this.lastProblem = `cannot watch ${this.stateKey} (${(e as Error).message})`;
      if (!this.closed) setTimeout(() => void this.openWatch(), Math.min(1000, this.o.maxStalenessMs / 4)).unref();
    }
  }

  /** Membership (fleet.ts): a lost lease leaves the state unconfirmed until it is granted again. */
  setLeaseOk(ok: boolean, why?: string): void {
    this.leaseOk = ok;
    if (!ok) this.lastProblem = `the membership lease is lost (${why ?? 'expired'})`;
  }

  /** One quorum read: confirms contact with a majority and that no revision was missed. */
  private async beat(): Promise<void> {
    if (this.beating || this.closed) return;
    this.beating = true;
    // What a quorum read confirms is the state as of when it was sent.
    const sentAt = this.now();
    try {
      const res = await withDeadline(this.client.get(this.stateKey).exec(), this.callMs, 'confirm the control state (quorum read)');
      const rev = Number(res.kvs[0]?.mod_revision ?? 0);
      if (this.watchUp && this.leaseOk) this.confirmedAt = Math.max(this.confirmedAt, sentAt);
      if (rev !== this.lastRevision) this.handlers?.changed('etcd-resync');
    } catch (e) {
      this.lastProblem = `no quorum read answered (${(e as Error).message})`;
    } finally {
      this.beating = false;
    }
    this.judge();
  }

  private judge(): void {
    const age = this.now() - this.confirmedAt;
    const bound = this.o.maxStalenessMs + this.o.keepLastKnownMs;
    const keeping = this.o.keepLastKnownMs > 0 && age > this.o.maxStalenessMs && age <= bound;
    if (keeping && !this.keepingLastKnown) {
      this.o.log.warn('fleet: the control state cannot be confirmed; serving with the last known state (control.etcd.keepLastKnownMs): a block engaged elsewhere meanwhile is not applied here', { unconfirmedMs: age, failClosedAfterMs: bound, reason: this.lastProblem });
    }
    this.keepingLastKnown = keeping;
    if (age > bound && !this.staleReported) {
      this.staleReported = true;
      this.handlers?.staleness?.(`the control state in etcd could not be confirmed for ${age} ms (bound ${bound} ms): ${this.lastProblem}`);
    } else if (age <= bound && this.staleReported) {
      this.staleReported = false;
      this.handlers?.staleness?.(undefined);
    }
  }

  /** Milliseconds since the state was last confirmed (metrics, fleet status). */
  stalenessMs(): number {
    return this.now() - this.confirmedAt;
  }

  /** Reported stale to the control plane (failing closed for want of confirmation). */
  isStale(): boolean {
    return this.staleReported;
  }

  revision(): number {
    return this.lastRevision;
  }

  noteOwnWrite(): void {
    /* the watch reports our own write too; reloadNow sees the same MAC and does nothing */
  }

  unwatch(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) void w.cancel().catch(() => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatch();
  }
}
