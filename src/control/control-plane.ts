/**
 * The control plane: kill switch (proxy, key store, key), key blocking and allowlists, behind the
 * AccessGate seam of the request path.
 *
 * Hot path: enter() reads one immutable in-memory snapshot (Set and Map lookups, policies compiled
 * once) and registers a ticket; no I/O, no allocation beyond the ticket.
 *
 * Durable path: every change is a read-modify-write of the state file under its lock
 * (state-store.ts); the snapshot is rebuilt from what was written. Changes made by another process
 * (the emergency CLI) are picked up by fs.watch on the folder, with a periodic stat as fallback;
 * each reload emits 'reload'.
 *
 * Fail closed: a state file that cannot be read or verified (at start or later) blocks everything,
 * GetHealthStatus included, until a valid file appears (`xks-proxy killswitch repair`). No approval
 * can lift it. The state is authenticated inside the HSM (state-store.ts, state-auth.ts); a file
 * changed, rolled back or deleted outside the proxy is tampering: logged at error level and
 * emitted as 'tamper' (start.ts audits it). Such a fault, unlike an engaged block, makes the node
 * not ready (readinessFault()), so that a load balancer sends KMS's calls elsewhere.
 *
 * One live configuration: key store names and key -> HSM key mappings are read from a KeyDirectory
 * (the registry hot reload updates), never copied at start-up. A key block stops every path to the
 * same HSM key; refresh() recompiles the snapshot after a reload so that ids added later that reach
 * a blocked HSM key are blocked too.
 *
 * Policies: tightening applies at once; loosening or deleting needs the lift quorum (isTightening).
 *
 * Drain: engage() swaps the snapshot first (new requests in scope are refused from then on), then
 * waits until every ticket in scope issued before the swap has called done(), bounded by
 * drainTimeoutMs. Once it resolves with drained=true, no HSM operation starts in that scope.
 */
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { XksError } from '../errors/xks-error';
import type { AppLogger } from '../log/logger';
import type { AccessGate, GateContext, GateTicket } from './access-gate';
import { namesOnly, type KeyDirectory } from './key-directory';
import { CompiledPolicy, isTightening, noPolicy, validatePolicy, type PolicyDoc } from './policy';
import { blockCoverage, blockedHsmKeys, checkScope, keyRef, parseScope, type BlockCoverage } from './scope';
import {
  ControlError,
  applyApproval,
  applyEngage,
  applyPolicyApproval,
  applyPolicyDelete,
  applyPolicySet,
  applyRetireApproval,
  checkReason,
  type Actor,
  type Block,
  type HistoryEvent,
  type RetireChange,
  type StateBody,
  type StoredPolicy,
} from './state-model';
import type { StateAuthenticator } from './state-auth';
import type { StoredState } from './state-store';
import type { ControlStore } from './control-store';
import { FileControlStore } from './file-control-store';
import { canonicalJson } from '../audit/canonical';

export interface ControlPlaneOptions {
  /** The file store's folder (used when no `store` is given). */
  stateDir?: string;
  /** Where the state lives (control-store.ts); the file store in `stateDir` when absent. */
  store?: ControlStore;
  /**
   * The configured key stores, read live (the registry): scopes and policies must name one of them,
   * and key blocks resolve to HSM keys through it. A plain list is a fixed directory without keys.
   */
  keyStores: KeyDirectory | readonly string[];
  /** What a key store without a policy allows (control.policies.defaultForKeyStoresWithoutPolicy). */
  defaultForKeyStoresWithoutPolicy?: 'allow' | 'deny';
  approvalsRequired: number;
  approvalWindowMs: number;
  drainTimeoutMs: number;
  watchIntervalMs: number;
  /** The HSM's MAC key and generation record for the state file (state-auth.ts), for the file store. */
  stateAuth?: StateAuthenticator;
  log: AppLogger;
  now?: () => number;
  /**
   * Other processes that gate requests on the same state (cluster workers): called after a local
   * engage has drained, to make every one of them load the new state and drain its own operations
   * in scope before the engage returns.
   */
  propagateEngage?: (scope: string) => Promise<{ drained: boolean; stillInFlight: number }>;
  /**
   * Called after any other change, so that other processes load it at once (not only on fs.watch);
   * the change returns once the promise settles.
   */
  propagateChange?: () => void | Promise<void>;
  /**
   * Fleet mode: after a local engage has drained, wait until every live member of the fleet has
   * acknowledged the store revision that holds the block (bounded; names those that did not).
   */
  awaitFleet?: (revision: number) => Promise<FleetAcks>;
}

export interface FleetAcks {
  /** Live members that applied the revision (this one included). */
  acknowledged: string[];
  /** Live members that did not acknowledge within the bounded wait. */
  missing: string[];
}

interface Snapshot {
  /** Set when the state cannot be trusted: everything is blocked. */
  failClosed: string | undefined;
  /** failClosed because of a change on disk the proxy did not make (not a fault of its own). */
  tamper: boolean;
  proxy: Block | undefined;
  stores: Map<string, Block>;
  keys: Map<string, Block>;
  /** HSM keys (labels) behind key blocks: every id that reaches one of them is blocked. */
  hsmKeys: Map<string, Block>;
  policies: Map<string, CompiledPolicy>;
  mac: string;
  state: StoredState | undefined;
}

interface LiveTicket {
  keyStore: string;
  externalKeyId: string | undefined;
  hsmKey: string | undefined;
  waiter: (() => void) | undefined;
}

export interface EngageResult {
  scope: string;
  generation: number;
  /** True when every operation in scope that had passed the gate before the engage has finished. */
  drained: boolean;
  /** Operations in scope still running when drainTimeoutMs ran out (0 when drained). */
  stillInFlight: number;
  /** Fleet mode: the store revision of the block and which live members acknowledged it. */
  revision?: number | undefined;
  fleet?: FleetAcks | undefined;
}

export interface ApproveResult {
  scope: string;
  lifted: boolean;
  approvers: string[];
  required: number;
  generation: number;
}

export interface PublicState {
  failClosed: string | null;
  /** failClosed because the state on disk was changed outside the proxy (audited as tampering). */
  tampered: boolean;
  generation: number | null;
  writtenAt: string | null;
  blocks: BlockView[];
  pendingApprovals: { scope: string; operator: string; at: string; reason: string }[];
  quorum: { approvalsRequired: number; approvalWindowSeconds: number };
  policies: Record<string, { revision: number; updatedAt: string; updatedBy: string; statements: number; defaultDecision: string }>;
  /** Policy loosenings and deletions waiting for the quorum. */
  pendingPolicyApprovals: { keyStore: string; change: 'set' | 'delete'; digest: string; operator: string; at: string; reason: string }[];
  /** Key version retirements waiting for the quorum. */
  pendingRetireApprovals: { keyLabel: string; version: number; forceRecentUse: boolean; operator: string; at: string; reason: string }[];
  /** What a key store without a policy allows. */
  defaultForKeyStoresWithoutPolicy: 'allow' | 'deny';
  history: StateBody['history'];
  inFlight: number;
}

/** A block as `killswitch show` reports it: what it covers in the configuration in force now. */
export interface BlockView extends Block {
  covers: BlockCoverage;
}

export interface RetireApprovalResult extends RetireChange {
  /** True once the quorum approved: the caller destroys the version now. */
  approved: boolean;
  approvers: string[];
  required: number;
  generation: number;
  revision?: number | undefined;
}

export interface PolicyChangeResult {
  keyStore: string;
  /** False while a loosening or deletion waits for the quorum. */
  applied: boolean;
  /** "tightening" (applied at once) or "loosening" (needs the quorum). */
  kind: 'tightening' | 'loosening';
  approvers: string[];
  required: number;
  generation: number;
  revision?: number | undefined;
}

const BLOCKED_MESSAGE = 'The external key store is blocked by the proxy operator.';
const KEY_BLOCKED_MESSAGE = 'The external key is blocked by the proxy operator.';
/** The statement named in the log when a key store without a policy is denied by default. */
export const NO_POLICY_DENY = '(no policy: control.policies.defaultForKeyStoresWithoutPolicy deny)';

export class ControlPlane extends EventEmitter implements AccessGate {
  private snap: Snapshot;
  private readonly store: ControlStore;
  private readonly live = new Set<LiveTicket>();
  private readonly now: () => number;
  private reloadQueued = false;
  /** Set while the store cannot confirm the state (fleet mode): everything is refused. */
  private stale: string | undefined;
  /** The last trusted state installed: what a state read after a fault is compared with (audit). */
  private lastGood: StoredState | undefined;
  /** Reloads run one at a time (each reads the HSM), so that an older read never replaces a newer one. */
  private reloadChain: Promise<unknown> = Promise.resolve();
  /** In-process serialisation of changes (the file lock serialises processes). */
  private chain: Promise<unknown> = Promise.resolve();
  private readonly directory: KeyDirectory;
  private readonly defaultWithoutPolicy: 'allow' | 'deny';

  private constructor(
    private readonly opts: ControlPlaneOptions,
    store: ControlStore,
  ) {
    super();
    this.now = opts.now ?? Date.now;
    this.directory = isDirectory(opts.keyStores) ? opts.keyStores : namesOnly(opts.keyStores);
    this.defaultWithoutPolicy = opts.defaultForKeyStoresWithoutPolicy ?? 'allow';
    this.store = store;
    this.snap = failClosedSnapshot('not loaded yet', false);
  }

  /**
   * Creates the state folder and the first state file on a fresh appliance (fresh: no file and no
   * generation record in the HSM; a deleted state is never re-created), then loads and verifies it.
   */
  static async open(opts: ControlPlaneOptions): Promise<ControlPlane> {
    const store = opts.store ?? fileStore(opts);
    await store.initIfFresh((opts.now ?? Date.now)());
    const cp = new ControlPlane(opts, store);
    cp.snap = await cp.load();
    cp.lastGood = cp.snap.state;
    return cp;
  }

  // ---- hot path ------------------------------------------------------------------------------

  enter(ctx: GateContext): GateTicket {
    const s = this.snap;
    if (s.failClosed !== undefined) throw new XksError('InvalidStateException', BLOCKED_MESSAGE, `control state unreadable, failing closed: ${s.failClosed}`).because(s.tamper ? 'control.tampered' : 'control.fail_closed');
    if (s.proxy) throw new XksError('InvalidStateException', BLOCKED_MESSAGE, 'kill switch engaged (scope proxy)').because('kill_switch.proxy');
    if (s.stores.size > 0 && s.stores.has(ctx.keyStore)) throw new XksError('InvalidStateException', BLOCKED_MESSAGE, `kill switch engaged (scope keystore:${ctx.keyStore})`).because('kill_switch.key_store');
    let keyBlocked = false;
    if (ctx.externalKeyId !== undefined && s.keys.size > 0 && s.keys.has(keyRef(ctx.keyStore, ctx.externalKeyId))) {
      if (ctx.api !== 'GetKeyMetadata') throw new XksError('InvalidStateException', KEY_BLOCKED_MESSAGE, `kill switch engaged (scope key:${ctx.keyStore}/${ctx.externalKeyId})`).because('kill_switch.key');
      keyBlocked = true;
    }
    // Another id (in this key store or another) that reaches a blocked HSM key: the same block.
    const viaHsmKey = ctx.hsmKey !== undefined && s.hsmKeys.size > 0 ? s.hsmKeys.get(ctx.hsmKey) : undefined;
    if (viaHsmKey) {
      if (ctx.api !== 'GetKeyMetadata') throw new XksError('InvalidStateException', KEY_BLOCKED_MESSAGE, `kill switch engaged (scope ${viaHsmKey.scope}, same HSM key)`).because('kill_switch.hsm_key');
      keyBlocked = true;
    }
    let allowedBy: string | undefined;
    if (ctx.api !== 'GetHealthStatus') {
      // Spec "Authorization": secondary authorization never applies to GetHealthStatus.
      const policy = s.policies.get(ctx.keyStore);
      const d = policy ? policy.evaluate(ctx) : this.defaultWithoutPolicy === 'deny' ? { allow: false, statement: NO_POLICY_DENY } : undefined;
      if (d && !d.allow) {
        const err = new XksError('AccessDeniedException', undefined, `denied by policy statement ${d.statement} of key store ${ctx.keyStore}`).because('policy.denied');
        err.statement = d.statement;
        throw err;
      }
      allowedBy = d?.statement;
    }
    const t: LiveTicket = { keyStore: ctx.keyStore, externalKeyId: ctx.externalKeyId, hsmKey: ctx.hsmKey, waiter: undefined };
    this.live.add(t);
    let open = true;
    return {
      keyBlocked,
      allowedBy,
      done: () => {
        if (!open) return;
        open = false;
        this.live.delete(t);
        t.waiter?.();
      },
    };
  }

  // ---- snapshot ------------------------------------------------------------------------------

  /** The verified state as a snapshot; anything untrusted is a fail-closed one. */
  private async load(): Promise<Snapshot> {
    if (this.stale !== undefined) return failClosedSnapshot(this.stale, false);
    try {
      const r = await this.store.read();
      if (r.ok) return this.compile(r.state);
      if (r.fresh) return failClosedSnapshot(`${this.store.location} does not exist (the state was never initialised)`, false);
      return failClosedSnapshot(r.reason, r.tamper);
    } catch (e) {
      return failClosedSnapshot(`cannot load: ${(e as Error).message}`, false);
    }
  }

  private compile(state: StoredState): Snapshot {
    const b = state.body;
    const stores = new Map<string, Block>();
    const keys = new Map<string, Block>();
    const hsmKeys = new Map<string, Block>();
    let proxy: Block | undefined;
    for (const block of b.blocks) {
      const sc = parseScope(block.scope);
      if (sc.kind === 'proxy') proxy = block;
      else if (sc.kind === 'keystore') stores.set(sc.keyStore, block);
      else {
        keys.set(keyRef(sc.keyStore, sc.externalKeyId), block);
        for (const label of blockedHsmKeys(block.scope, block.hsmKey, this.directory)) if (!hsmKeys.has(label)) hsmKeys.set(label, block);
      }
    }
    const policies = new Map<string, CompiledPolicy>();
    for (const [ks, p] of Object.entries(b.policies)) policies.set(ks, new CompiledPolicy(p.policy));
    return { failClosed: undefined, tamper: false, proxy, stores, keys, hsmKeys, policies, mac: state.mac, state };
  }

  /**
   * The key store configuration changed (hot reload): recompile the snapshot from the same state,
   * so that key blocks cover the ids that reach their HSM keys now.
   */
  refresh(): void {
    const st = this.snap.state;
    if (this.snap.failClosed !== undefined || !st) return;
    this.snap = this.compile(st);
  }

  private install(next: Snapshot, origin: string): void {
    const prev = this.snap;
    this.snap = next;
    if (next.state) this.lastGood = next.state;
    if (next.failClosed !== undefined && next.tamper && next.failClosed !== prev.failClosed) {
      this.opts.log.error(`control state TAMPERING detected: the stored state (${this.store.location}) was changed outside the proxy; every key store is blocked until it is repaired (xks-proxy killswitch repair${this.store.kind === 'file' ? '' : ', on any host with the fleet configuration'})`, { reason: next.failClosed, origin });
      this.emit('tamper', { reason: next.failClosed, origin });
    } else if (next.failClosed !== undefined && prev.failClosed === undefined) {
      this.opts.log.error('control state unreadable: every key store is blocked until it is repaired (xks-proxy killswitch repair)', { reason: next.failClosed, origin });
    } else if (next.failClosed === undefined && prev.failClosed !== undefined) {
      this.opts.log.warn('control state readable again; fail-closed block removed', { generation: next.state?.generation, origin });
    }
    this.emit('reload', { origin, failClosed: next.failClosed, generation: next.state?.generation });
  }

  /**
   * Re-read and verify the state file; installs it when it changed. Resolves true when the
   * snapshot changed. Never rejects (a failure to load is a fail-closed snapshot).
   */
  reload(origin = 'reload'): Promise<boolean> {
    const run = this.reloadChain.then(() => this.reloadNow(origin));
    this.reloadChain = run.catch(() => undefined);
    return run;
  }

  private async reloadNow(origin: string): Promise<boolean> {
    const next = await this.load();
    const cur = this.snap;
    // Fleet mode: a read that fails (no quorum, timeout) says nothing new about the state; whether
    // the state in force is still confirmed is the staleness bound's decision (failing closed once
    // it runs out), not one failed read's.
    if (this.store.kind !== 'file' && next.failClosed !== undefined && !next.tamper && cur.failClosed === undefined && this.stale === undefined) return false;
    if (next.failClosed === undefined && cur.failClosed === undefined && next.mac === cur.mac) return false;
    if (next.failClosed !== undefined && cur.failClosed === next.failClosed) return false;
    // Read before a change this process installed meanwhile: stale, not newer (a rollback on disk
    // is refused by the store against the HSM's record, not here).
    if (next.state && cur.state && next.state.storeId === cur.state.storeId && next.state.generation < cur.state.generation) return false;
    // What the news is measured against: the state in force, or after a fail-closed spell (tampering,
    // staleness) the last trusted one. Taken before install(), which makes `next` the last trusted.
    const base = cur.state ?? this.lastGood;
    this.install(next, origin);
    const fleet = this.store.kind !== 'file';
    // File mode: the proxy's own processes share the folder, so only the emergency CLI's changes
    // are news. Fleet mode: every change read here was made by another member (this member's own
    // are installed when written), and each member audits what it applies.
    const events = newEvents(base?.body.history ?? [], next.state?.body.history ?? []).filter((e) => fleet || e.by.via === 'local-cli');
    if (events.length) this.emit('external-change', events, next.state?.revision);
    if (fleet && next.state) {
      // Blocks new to this member: its operations in scope drain before it acknowledges.
      const had = new Set((base?.body.blocks ?? []).map((x) => x.scope));
      const added = next.state.body.blocks.filter((x) => !had.has(x.scope)).map((x) => x.scope);
      const drains = await Promise.all(added.map((sc) => this.drainScope(sc)));
      this.emit('applied', { revision: next.state.revision, own: false, drained: drains.every((d) => d.drained) });
    }
    return true;
  }

  /** Follow changes made elsewhere (another process, another member of the fleet). */
  startWatching(): void {
    // At most one reload running and one more queued, however often the store reports changes (a
    // watch that reconnects in a loop while etcd has no quorum reported thousands per second, and
    // the queue of reloads, each waiting for a read, filled the heap).
    let running = false;
    const check = (origin: string) => {
      if (this.reloadQueued) return;
      this.reloadQueued = true;
      if (running) return;
      setImmediate(() => {
        this.reloadQueued = false;
        running = true;
        void this.reload(origin).finally(() => {
          running = false;
          if (this.reloadQueued) {
            this.reloadQueued = false;
            check(origin);
          }
        });
      });
    };
    this.store.watch({
      changed: check,
      wantsRetry: () => this.snap.failClosed !== undefined && !this.snap.tamper && this.stale === undefined,
      staleness: (reason) => this.setStale(reason),
    });
  }

  /**
   * The store cannot confirm that the state in force is current (fleet mode: watch broken, no
   * quorum, lease lost) beyond its staleness bound: fail closed until it can, then re-read.
   */
  private setStale(reason: string | undefined): void {
    if (reason === this.stale) return;
    const was = this.stale;
    this.stale = reason;
    if (reason !== undefined) {
      this.install(failClosedSnapshot(reason, false), 'staleness');
      this.emit('stale', { reason });
    } else {
      this.emit('recovered', { was });
      void this.reload('recovered');
    }
  }

  stopWatching(): void {
    this.store.unwatch();
  }

  close(): void {
    this.stopWatching();
    void this.store.close();
  }

  /** The store this plane reads and writes. */
  get controlStore(): ControlStore {
    return this.store;
  }

  // ---- changes -------------------------------------------------------------------------------

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.chain.then(f, f);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private refuseIfFailClosed(): void {
    if (this.stale !== undefined) throw new ControlError('fail-closed', `this member cannot confirm the fleet's control state and refuses every call until etcd answers again; make the change through another member, or with "xks-proxy killswitch emergency-engage" (${this.stale})`);
    if (this.snap.failClosed !== undefined) throw new ControlError('fail-closed', `the control state is unreadable and everything is blocked; repair it on the appliance with "xks-proxy killswitch repair" (${this.snap.failClosed})`);
  }

  private async change<R>(f: (b: StateBody) => { body: StateBody; result: R }, origin: string): Promise<{ state: StoredState; result: R }> {
    this.refuseIfFailClosed();
    let out: { state: StoredState; result: R };
    try {
      out = await this.store.mutate(f, this.now);
    } catch (e) {
      // The store found the state untrusted before the watcher did: load it now, so that the
      // tampering is logged and audited and the gate closes.
      if (e instanceof ControlError && e.code === 'fail-closed') await this.reload('change');
      throw e;
    }
    this.install(this.compile(out.state), origin);
    this.store.noteOwnWrite();
    this.emit('applied', { revision: out.state.revision, own: true });
    if (origin !== 'engage') await this.opts.propagateChange?.();
    return out;
  }

  engage(scope: string, by: Actor, reason: string): Promise<EngageResult> {
    return this.serial(async () => {
      const canonical = checkScope(scope, this.directory.names());
      checkReason(reason);
      const sc = parseScope(canonical);
      const hsmKey = sc.kind === 'key' ? this.directory.hsmKeyOf(sc.keyStore, sc.externalKeyId) : undefined;
      const { state } = await this.change((b) => ({ body: applyEngage(b, canonical, by, reason, this.now(), hsmKey), result: undefined }), 'engage');
      // The new snapshot is installed: enter() refuses the scope from here on, so every live ticket
      // in scope was issued before the swap. Wait for those.
      const local = await this.drainScope(canonical);
      const remote = this.opts.propagateEngage ? await this.opts.propagateEngage(canonical) : { drained: true, stillInFlight: 0 };
      const drained = local.drained && remote.drained;
      const stillInFlight = local.stillInFlight + remote.stillInFlight;
      if (!drained) this.opts.log.warn('kill switch engaged, but operations in scope were still running when the drain timeout ran out', { scope: canonical, stillInFlight });
      const fleet = this.opts.awaitFleet && state.revision !== undefined ? await this.opts.awaitFleet(state.revision) : undefined;
      if (fleet && fleet.missing.length > 0) this.opts.log.warn('kill switch engaged, but some live members of the fleet did not acknowledge it within the wait', { scope: canonical, revision: state.revision, missing: fleet.missing });
      const result: EngageResult = { scope: canonical, generation: state.generation, drained, stillInFlight, ...(state.revision !== undefined ? { revision: state.revision } : {}), ...(fleet ? { fleet } : {}) };
      this.emit('engaged', result);
      return result;
    });
  }

  /**
   * Wait for the live tickets in `scope`. Called once the snapshot that blocks the scope is
   * installed, so every such ticket was issued before it.
   */
  private async drainScope(canonical: string): Promise<{ drained: boolean; stillInFlight: number }> {
    const sc = parseScope(canonical);
    const blockedHsmKeys = this.snap.hsmKeys;
    const inScope = (t: LiveTicket): boolean => {
      if (sc.kind === 'proxy') return true;
      if (sc.kind === 'key' && t.hsmKey !== undefined && blockedHsmKeys.has(t.hsmKey)) return true;
      return t.keyStore === sc.keyStore && (sc.kind === 'keystore' || t.externalKeyId === sc.externalKeyId);
    };
    const pending = [...this.live].filter(inScope);
    const drained = await this.drain(pending);
    return { drained, stillInFlight: drained ? 0 : pending.filter((t) => this.live.has(t)).length };
  }

  /**
   * For a cluster worker, told by the primary that it engaged `scope`: load the new state now
   * (not on the next fs.watch event), then wait for this process's operations in scope.
   */
  async syncEngaged(scope: string): Promise<{ drained: boolean; stillInFlight: number }> {
    await this.reload('cluster');
    return this.drainScope(scope);
  }

  private drain(tickets: LiveTicket[]): Promise<boolean> {
    if (tickets.length === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      let left = tickets.length;
      const timer = setTimeout(() => resolve(false), this.opts.drainTimeoutMs);
      for (const t of tickets) {
        t.waiter = () => {
          if (--left === 0) {
            clearTimeout(timer);
            resolve(true);
          }
        };
        // done() may have been called between the filter and here.
        if (!this.live.has(t)) t.waiter();
      }
    });
  }

  approveLift(scope: string, by: Actor, reason: string): Promise<ApproveResult> {
    return this.serial(async () => {
      // A block stays liftable when its key store was removed by a reload.
      const canonical = this.isBlocked(scope) ? scope : checkScope(scope, this.directory.names());
      checkReason(reason);
      const { state, result } = await this.change((b) => {
        const o = applyApproval(b, canonical, by, reason, this.now(), this.opts.approvalsRequired, this.opts.approvalWindowMs);
        return { body: o.state, result: o };
      }, 'approve-lift');
      return { scope: canonical, lifted: result.lifted, approvers: result.approvers, required: result.required, generation: state.generation };
    });
  }

  /**
   * Validated before it replaces anything: an invalid policy is refused with its errors, the old one
   * stays. A tightening (isTightening against the policy in force, or against the default for key
   * stores without one) applies at once; anything else is this operator's approval of the change,
   * applied once the lift quorum approved the same document within the window.
   */
  setPolicy(keyStore: string, raw: unknown, by: Actor, reason: string): Promise<PolicyChangeResult> {
    return this.serial(async () => {
      this.checkKeyStore(keyStore);
      checkReason(reason);
      const v = validatePolicy(raw);
      if (!v.ok) throw new ControlError('policy-invalid', `policy for key store ${keyStore} is invalid; the policy in force is unchanged`, v.errors);
      return this.changePolicy(keyStore, v.policy, by, reason);
    });
  }

  /** Deleting returns the key store to the default for key stores without a policy: a loosening unless that default is deny. */
  deletePolicy(keyStore: string, by: Actor, reason: string): Promise<PolicyChangeResult> {
    return this.serial(async () => {
      if (!this.policy(keyStore)) this.checkKeyStore(keyStore);
      checkReason(reason);
      return this.changePolicy(keyStore, undefined, by, reason);
    });
  }

  private async changePolicy(keyStore: string, next: PolicyDoc | undefined, by: Actor, reason: string): Promise<PolicyChangeResult> {
    const none = noPolicy(this.defaultWithoutPolicy);
    const inForce = (b: StateBody) => b.policies[keyStore]?.policy ?? none;
    const kind = (b: StateBody): PolicyChangeResult['kind'] => (isTightening(inForce(b), next ?? none) ? 'tightening' : 'loosening');
    const change = next ? ('set' as const) : ('delete' as const);
    const digest = crypto.createHash('sha256').update(canonicalJson({ change, policy: next ?? null })).digest('hex');
    type Outcome = Pick<PolicyChangeResult, 'kind' | 'applied' | 'approvers' | 'required'>;
    const { state, result } = await this.change<Outcome>(
      (b) => {
        const k = kind(b);
        if (k === 'tightening') {
          const body = next ? applyPolicySet(b, keyStore, next, by, reason, this.now(), 'tightening') : applyPolicyDelete(b, keyStore, by, reason, this.now(), 'tightening');
          return { body, result: { kind: k, applied: true, approvers: [by.operator], required: 1 } };
        }
        const o = applyPolicyApproval(b, { keyStore, change, policy: next, digest }, by, reason, this.now(), this.opts.approvalsRequired, this.opts.approvalWindowMs);
        return { body: o.state, result: { kind: k, applied: o.applied, approvers: o.approvers, required: o.required } };
      },
      next ? 'policy-set' : 'policy-delete',
    );
    return { keyStore, ...result, generation: state.generation, revision: state.body.policies[keyStore]?.revision };
  }

  /**
   * One operator's approval to retire a key version (state-model.ts applyRetireApproval): pending
   * in the control state (the file, or etcd for the whole fleet) until the lift quorum approved the
   * same retirement within the window. The caller checked the version against the HSM and the
   * usage counts first, and destroys it once this resolves with approved=true.
   */
  approveRetire(c: RetireChange, by: Actor, reason: string): Promise<RetireApprovalResult> {
    return this.serial(async () => {
      checkReason(reason);
      const { state, result } = await this.change((b) => {
        const o = applyRetireApproval(b, c, by, reason, this.now(), this.opts.approvalsRequired, this.opts.approvalWindowMs);
        return { body: o.state, result: o };
      }, 'retire-approve');
      return { ...c, approved: result.approved, approvers: result.approvers, required: result.required, generation: state.generation, ...(state.revision !== undefined ? { revision: state.revision } : {}) };
    });
  }

  private checkKeyStore(name: string): void {
    if (!this.directory.names().includes(name)) throw new ControlError('invalid', `no key store named "${name}"`);
  }

  private isBlocked(scope: string): boolean {
    return this.snap.state?.body.blocks.some((b) => b.scope === scope) ?? false;
  }

  // ---- reading -------------------------------------------------------------------------------

  policy(keyStore: string): StoredPolicy | undefined {
    return this.snap.state?.body.policies[keyStore];
  }

  policyDoc(keyStore: string): PolicyDoc | undefined {
    return this.policy(keyStore)?.policy;
  }

  /**
   * The scopes in force as the metrics count them: proxy and key store blocks as engaged, and one
   * key:KS/ID for every external key id a key block stops now (ids sharing its HSM key included).
   */
  effectiveScopes(): string[] {
    const out = new Set<string>();
    for (const b of this.snap.state?.body.blocks ?? []) {
      if (!b.scope.startsWith('key:')) out.add(b.scope);
      else for (const p of blockCoverage(b, this.directory).externalKeys) out.add(`key:${keyRef(p.keyStore, p.externalKeyId)}`);
    }
    return [...out];
  }

  isFailClosed(): boolean {
    return this.snap.failClosed !== undefined;
  }

  /** Why the state is untrusted because of tampering (undefined otherwise). */
  tamperReason(): string | undefined {
    return this.snap.tamper ? this.snap.failClosed : undefined;
  }

  /**
   * Not ready because of a fault: the state is not trusted and every call is refused. An engaged
   * block is not a fault (the node stays ready so that KMS gets the spec's InvalidStateException).
   * Short and without paths: the readiness probe is unauthenticated.
   */
  readinessFault(): string | undefined {
    const s = this.snap;
    if (s.failClosed === undefined) return undefined;
    return s.tamper ? 'control state failed verification (tampering suspected); every call is refused until it is repaired' : 'control state cannot be verified; every call is refused until it is repaired';
  }

  publicState(): PublicState {
    const s = this.snap;
    const body = s.state?.body;
    const nowMs = this.now();
    const policies: PublicState['policies'] = {};
    for (const [ks, p] of Object.entries(body?.policies ?? {})) {
      policies[ks] = { revision: p.revision, updatedAt: p.updatedAt, updatedBy: p.updatedBy.operator, statements: p.policy.statements.length, defaultDecision: p.policy.defaultDecision };
    }
    return {
      failClosed: s.failClosed ?? null,
      tampered: s.tamper,
      generation: s.state?.generation ?? null,
      writtenAt: s.state?.writtenAt ?? null,
      blocks: (body?.blocks ?? []).map((b) => ({ ...b, covers: blockCoverage(b, this.directory) })),
      pendingApprovals: (body?.approvals ?? []).filter((a) => nowMs - a.atMs <= this.opts.approvalWindowMs).map((a) => ({ scope: a.scope, operator: a.by.operator, at: a.at, reason: a.reason })),
      quorum: { approvalsRequired: this.opts.approvalsRequired, approvalWindowSeconds: Math.round(this.opts.approvalWindowMs / 1000) },
      policies,
      pendingPolicyApprovals: (body?.policyApprovals ?? []).filter((a) => nowMs - a.atMs <= this.opts.approvalWindowMs).map((a) => ({ keyStore: a.keyStore, change: a.change, digest: a.digest, operator: a.by.operator, at: a.at, reason: a.reason })),
      pendingRetireApprovals: (body?.retireApprovals ?? []).filter((a) => nowMs - a.atMs <= this.opts.approvalWindowMs).map((a) => ({ keyLabel: a.keyLabel, version: a.version, forceRecentUse: a.forceRecentUse, operator: a.by.operator, at: a.at, reason: a.reason })),
      defaultForKeyStoresWithoutPolicy: this.defaultWithoutPolicy,
      history: (body?.history ?? []).slice(-50),
      inFlight: this.live.size,
    };
  }
}

/** Events of `next` after the last event of `prev` (all of the newest one when prev's is not found). */
function newEvents(prev: HistoryEvent[], next: HistoryEvent[]): HistoryEvent[] {
  const last = prev[prev.length - 1];
  if (!last) return next;
  const key = JSON.stringify(last);
  for (let i = next.length - 1; i >= 0; i--) if (JSON.stringify(next[i]) === key) return next.slice(i + 1);
  return next.slice(-1);
}

function failClosedSnapshot(reason: string, tamper: boolean): Snapshot {
  return { failClosed: reason, tamper, proxy: undefined, stores: new Map(), keys: new Map(), hsmKeys: new Map(), policies: new Map(), mac: '', state: undefined };
}

function isDirectory(k: KeyDirectory | readonly string[]): k is KeyDirectory {
  return !Array.isArray(k);
}

function fileStore(opts: ControlPlaneOptions): ControlStore {
  if (opts.stateDir === undefined || opts.stateAuth === undefined) throw new Error('the file control store needs stateDir and stateAuth');
  return new FileControlStore(opts.stateDir, opts.stateAuth, opts.watchIntervalMs, opts.log);
}
