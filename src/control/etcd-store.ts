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
import { serializeState, verifyStateText, type ReadResult, type RepairSource, type StoredState } from './state-store';

export interface EtcdStoreOptions {
  prefix: string;
  maxStalenessMs: number;
  keepLastKnownMs: number;
  log: AppLogger;
  now?: () => number;
}

/** Concurrent writers: attempts before a change gives up (each loser re-reads the winner's state). */
const MAX_TXN_ATTEMPTS = 32;
/** Repair: how many earlier values of the state key it verifies (etcd keeps them until compaction). */
const HISTORY_VALUES = 256;
/** Repair of a deleted key: how many revisions back it looks for the key's last value. */
const DELETED_LOOKBACK_REVISIONS = 2000;

/** What a member says in its record (fleet.ts) about the state it has verified: repair stays above it. */
interface MemberFloor {
  storeId?: unknown;
  stateGeneration?: unknown;
}

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
  /** Quorum reads in flight: a second may start while one hangs (see beat()). */
  private beating = 0;
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
      const res = await withDeadline(this.client.get(this.stateKey).exec(), this.callMs, 'read the control state');
      kv = res.kvs[0];
      if (!kv) {
        const marker = await withDeadline(this.client.get(this.markerKey).exec(), this.callMs, 'read the control state marker');
        if (marker.kvs.length === 0) return { ok: false, fresh: true };
        return { ok: false, fresh: false, tamper: true, reason: `${this.location} is missing at revision ${res.header.revision}, but the fleet was initialised (${this.markerKey} exists): deleted outside the proxy` };
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
    // The revision names the value in etcd's history (audit, forensics: etcdctl get --rev).
    const r = await verifyStateText(this.auth, text, anchor, `${this.location} at revision ${kv.mod_revision}`);
    if (!r.ok) return r.fresh ? r : { ...r, reason: r.reason.replace('recorded in the HSM (an old file was put back: rollback)', 'already seen by this member (an old value was put back: rollback)').replace('(the file was changed outside the proxy)', '(the value was changed outside the proxy)') };
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

  /** The newest verified state this member has seen (its rollback floor), for its member record. */
  seenState(): { storeId: string; generation: number } | undefined {
    return this.seen;
  }

  /**
   * Replace a state that is not trusted (forged, rolled back, deleted), as the file store's repair
   * does: the new state has a proxy-scope block (applied by `build`), so the fleet stays blocked
   * until the lift quorum approves. Every member must accept it, so it carries the fleet's store id
   * and a generation above every member's rollback floor. That floor is at most the highest
   * generation ever written with the HSM key, which etcd's history of the key still holds (until
   * compaction): the values are verified with the HSM, not believed. The live members' records
   * (the generation each has verified) raise it further, in case the history was compacted; a
   * record can only push the generation up, which does no harm. 'backup' starts from the newest
   * verified value in the history (the last good state). The untrusted value is kept under
   * `<prefix>control/broken/<time>` for forensics.
   */
  async repair(source: RepairSource, build: (base: StateBody | undefined, note: string) => StateBody, nowMs: () => number = Date.now): Promise<StoredState> {
    if (source === 'adopt-unauthenticated') throw new ControlError('invalid', '--adopt-unauthenticated applies to a version 1 state file of the file store; the etcd store never held one');
    const head = await withDeadline(this.client.get(this.stateKey).exec(), this.callMs, 'read the control state');
    const kv = head.kvs[0] ?? (await this.lastValueBefore(Number(head.header.revision)));
    const history = await this.verifiedHistory(kv);
    const best = history.reduce<StoredState | undefined>((a, b) => (!a || b.generation > a.generation ? b : a), undefined);
    // Judge the current value against the history's floor: a valid old value put back is a rollback.
    if (best && (!this.seen || best.generation > this.seen.generation)) this.seen = { storeId: best.storeId, generation: best.generation };
    const cur = await this.read();
    if (cur.ok || cur.fresh) throw new ControlError('invalid', `nothing to repair: ${cur.ok ? `${this.location} verifies (generation ${cur.state.generation})` : 'the fleet has no state yet (fresh prefix)'}`);
    const floors = await this.memberFloors();
    const storeId = best?.storeId ?? floors.find((f) => typeof f.storeId === 'string')?.storeId ?? crypto.randomBytes(16).toString('hex');
    const after = Math.max(best?.generation ?? 0, ...floors.filter((f) => f.storeId === storeId).map((f) => f.generation));
    let base: StateBody | undefined;
    let note = `replaced an untrusted state (${cur.reason}) with an empty state`;
    if (source === 'backup') {
      if (!best) throw new ControlError('invalid', `backup unusable: no earlier value of ${this.stateKey} in etcd's history verifies with the HSM key (compacted, or never written)`);
      base = best.body;
      note = `replaced an untrusted state (${cur.reason}) with the last verified value in etcd's history, generation ${best.generation} at revision ${best.revision}`;
    }
    const writtenAt = new Date(nowMs()).toISOString();
    const { text, state } = await serializeState(this.auth, { storeId, generation: after + 1, writtenAt, body: build(base, note) });
    const current = head.kvs[0];
    const guard = current ? this.client.if(this.stateKey, 'Mod', '==', current.mod_revision) : this.client.if(this.stateKey, 'Create', '==', 0);
    const brokenKey = `${this.o.prefix}control/broken/${writtenAt}`;
    const res = await withDeadline(
      guard.then(this.client.put(brokenKey).value(current ? current.value : `deleted; last value at revision ${kv?.mod_revision ?? 'unknown'}`), this.client.put(this.stateKey).value(text), this.client.put(this.markerKey).value(`initialised; repaired ${writtenAt}`)).commit(),
      this.callMs,
      'write the repaired control state',
    );
    if (!res.succeeded) throw new ControlError('conflict', `${this.stateKey} changed during the repair; run it again`);
    const revision = Number(res.header.revision);
    this.noteSeen(storeId, state.generation, revision);
    return { ...state, revision };
  }

  /** The verified values of the state key, from `kv` back through etcd's history (bounded). */
  private async verifiedHistory(kv: IKeyValue | undefined): Promise<StoredState[]> {
    const out: StoredState[] = [];
    for (let i = 0; kv && i < HISTORY_VALUES; i++) {
      const text = kv.value.toString('utf8');
      let claimed = '';
      try {
        claimed = String((JSON.parse(text) as { storeId?: unknown }).storeId ?? '');
      } catch {
        /* not JSON: does not verify */
      }
      const r = await verifyStateText(this.auth, text, { storeId: claimed, generation: 0 }, `${this.location} at revision ${kv.mod_revision}`);
      if (r.ok) out.push({ ...r.state, revision: Number(kv.mod_revision) });
      const before = Number(kv.mod_revision) - 1;
      if (before < 1) break;
      kv = await this.valueAt(before);
    }
    return out;
  }

  /** The state key as of `revision` (undefined: absent then, or compacted away). */
  private async valueAt(revision: number): Promise<IKeyValue | undefined> {
    try {
      return (await withDeadline(this.client.get(this.stateKey).revision(revision).exec(), this.callMs, 'read an earlier control state')).kvs[0];
    } catch {
      return undefined;
    }
  }

  /** A deleted key: its last value, looking back revision by revision (bounded). */
  private async lastValueBefore(revision: number): Promise<IKeyValue | undefined> {
    for (let r = revision - 1; r >= 1 && r >= revision - DELETED_LOOKBACK_REVISIONS; r--) {
      const kv = await this.valueAt(r);
      if (kv) return kv;
    }
    return undefined;
  }

  /** The state each live member says it has verified (fleet.ts member records). */
  private async memberFloors(): Promise<Array<{ storeId: string; generation: number }>> {
    const records = await withDeadline(this.client.getAll().prefix(`${this.o.prefix}members/`).strings(), this.callMs, 'read the member records');
    const out: Array<{ storeId: string; generation: number }> = [];
    for (const v of Object.values(records)) {
      try {
        const m = JSON.parse(v) as MemberFloor;
        if (typeof m.storeId === 'string' && typeof m.stateGeneration === 'number' && Number.isInteger(m.stateGeneration)) out.push({ storeId: m.storeId, generation: m.stateGeneration });
      } catch {
        /* an unreadable record says nothing */
      }
    }
    return out;
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
        // etcd cancelled the watch (e.g. the revision it was to resume from after a disconnection
        // was compacted meanwhile): the client drops it for good, and this member would stay
        // unconfirmed, failing closed, until restarted. Open a new one; it starts with a re-read.
        if (this.watcher !== w) return;
        this.watcher = undefined;
        void w.cancel().catch(() => undefined);
        this.reopenWatch();
      });
      // A change between the first read and the watch's start: read again.
      changed('etcd-watch-started');
    } catch (e) {
      this.lastProblem = `cannot watch ${this.stateKey} (${(e as Error).message})`;
      this.reopenWatch();
    }
  }

  private reopenWatch(): void {
    if (!this.closed) setTimeout(() => void this.openWatch(), Math.min(1000, this.o.maxStalenessMs / 4)).unref();
  }

  /** Membership (fleet.ts): a lost lease leaves the state unconfirmed until it is granted again. */
  setLeaseOk(ok: boolean, why?: string): void {
    this.leaseOk = ok;
    if (!ok) this.lastProblem = `the membership lease is lost (${why ?? 'expired'})`;
  }

  /** One quorum read: confirms contact with a majority and that no revision was missed. */
  private async beat(): Promise<void> {
    // A read sent while etcd had no quorum hangs until its deadline (maxStalenessMs / 2); one more
    // may start meanwhile, so that the member confirms the state one heartbeat after etcd answers
    // again instead of after that deadline. Two at most: no pile-up while etcd is away.
    if (this.beating >= 2 || this.closed) return;
    this.beating++;
    // What a quorum read confirms is the state as of when it was sent.
    const sentAt = this.now();
    try {
      const res = await withDeadline(this.client.get(this.stateKey).exec(), this.callMs, 'confirm the control state (quorum read)');
      const rev = Number(res.kvs[0]?.mod_revision ?? 0);
      if (this.watchUp && this.leaseOk) this.confirmedAt = Math.max(this.confirmedAt, sentAt);
      if (rev !== this.lastRevision) this.handlers?.changed('etcd-resync');
      // The state in force is a fault (e.g. the HSM did not answer while verifying the value just
      // applied, or a read failed right as etcd came back): nothing in etcd changes to report it
      // again, so read again now that etcd answers (found with bench/fleet-recovery.ts: a member
      // stayed failing closed for good after a read failed at recovery).
      else if (this.handlers?.wantsRetry()) this.handlers.changed('retry');
    } catch (e) {
      this.lastProblem = `no quorum read answered (${(e as Error).message})`;
    } finally {
      this.beating--;
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

  /** Milliseconds since the state was last confirmed (metrics). */
  stalenessMs(): number {
    return this.now() - this.confirmedAt;
  }

  /** When the state was last confirmed (the send time of the quorum read that did): member record, fleet status. */
  confirmedAtMs(): number {
    return this.confirmedAt;
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
