/**
 * SigV4 credentials across the fleet (docs/fleet.md "Credentials across the fleet"): one etcd key
 * per credential, `<prefix>credentials/<keyStore>/<accessKeyId>`, whose value is the secret sealed
 * inside the HSM (src/auth/credential-envelope.ts). Rotating a credential on every member is one
 * write: each member watches the prefix (an etcd watch, no polling), decrypts what it sees with the
 * same token's wrap key and hands the result to its key store registry; a member that starts loads
 * them all first.
 *
 * Fail closed: a value that does not decrypt and authenticate (tampered, copied under another
 * name, sealed with another key, wrap key missing) is not accepted, and replaces nothing: the
 * credential it stands for is dropped on this member. It is logged and audited (without the
 * secret, which this member never saw), and every other credential keeps working. When the HSM
 * gave no verdict (pool busy, deadline, token failing), the value is not accepted either, but read
 * again later (backing off up to a minute), so that a passing HSM fault does not drop a credential
 * for good.
 *
 * Writes are transactions: a new credential only if its key does not exist yet; a removal only if
 * the credential, and (when it would be the last one) the other credentials of the key store
 * still are as read, so that two members removing two credentials at once cannot leave the key
 * store with none (spec "SigV4 credentials rotation": KMS must always hold a working one).
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { AdminActionRecord, AdminActionSink } from '../admin/actions';
import { CredentialRefused, openCredential, sealCredential, type CredentialCipher } from '../auth/credential-envelope';
import { generateAccessKeyId, generateSecret } from '../auth/credentials';
import type { FleetSecret, KeyStoreRegistry } from '../auth/key-stores';
import { ACCESS_KEY_ID_RE } from '../config/schema';
import type { AppLogger } from '../log/logger';
import { withDeadline } from './etcd-client';
import { ControlError } from './state-model';

export interface FleetCredentialOptions {
  /** The fleet's prefix, normalised (ends with "/"). */
  prefix: string;
  wrapKeyLabel: string;
  /** This member (or the CLI's host): recorded as the creator of what it seals. */
  nodeId: string;
  log: AppLogger;
  /** Bound of one etcd call. */
  callMs: number;
  now?: () => number;
}

interface Accepted extends FleetSecret {
  keyStore: string;
  accessKeyId: string;
}

const KEY_STORE_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;
/** Concurrent removals: attempts before one gives up (each re-reads). */
const MAX_TXN_ATTEMPTS = 16;
/** Re-reading after a failed load or a broken watch (etcd unreachable): not test synchronisation. */
const RETRY_MS = 1000;
/** The longest wait before a value the HSM gave no verdict on is tried again. */
const MAX_HSM_RETRY_MS = 60_000;

export class FleetCredentials {
  readonly keyPrefix: string;
  private readonly now: () => number;
  private registry: KeyStoreRegistry | undefined;
  private audit: AdminActionSink | undefined;
  /** What this member accepted, by etcd key. */
  private readonly accepted = new Map<string, Accepted>();
  /** The newest revision handled per etcd key (put or delete): an older event changes nothing. */
  private readonly handled = new Map<string, number>();
  /** Events are handled one at a time, in etcd's order (each waits for the HSM). */
  private queue: Promise<void> = Promise.resolve();
  private watcher: Watcher | undefined;
  private retry: NodeJS.Timeout | undefined;
  /** Values the HSM gave no verdict on: attempts so far per etcd key, and the timer of the next read. */
  private readonly hsmRetries = new Map<string, number>();
  private hsmRetry: NodeJS.Timeout | undefined;
  /** Etcd keys whose current value this member refuses (metrics). */
  private readonly refusedKeys = new Set<string>();
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly cipher: CredentialCipher,
    private readonly o: FleetCredentialOptions,
  ) {
    this.keyPrefix = `${o.prefix}credentials/`;
    this.now = o.now ?? Date.now;
  }

  keyOf(keyStore: string, accessKeyId: string): string {
    return `${this.keyPrefix}${keyStore}/${accessKeyId}`;
  }

  private nameOf(key: string): { keyStore: string; accessKeyId: string } | undefined {
    const [keyStore, accessKeyId, ...rest] = key.slice(this.keyPrefix.length).split('/');
    if (rest.length || !keyStore || !accessKeyId || !KEY_STORE_NAME_RE.test(keyStore) || !ACCESS_KEY_ID_RE.test(accessKeyId)) return undefined;
    return { keyStore, accessKeyId };
  }

  // ---- writers: the admin API and the CLI -------------------------------------------------------

  /** A new credential, sealed in the HSM and written to etcd; active on this member when it returns. */
  async create(keyStore: string): Promise<{ accessKeyId: string; secret: string; key: string; revision: number }> {
    const accessKeyId = generateAccessKeyId();
    const secret = generateSecret();
    const key = this.keyOf(keyStore, accessKeyId);
    const meta = { wrapKeyLabel: this.o.wrapKeyLabel, createdAt: new Date(this.now()).toISOString(), createdBy: this.o.nodeId };
    const name = { prefix: this.o.prefix, keyStore, accessKeyId };
    const text = await sealCredential(this.cipher, name, secret, meta);
    // Read back in the HSM before anything is written: etcd never holds a value the token cannot open.
    await openCredential(this.cipher, name, text, this.o.wrapKeyLabel).catch((e: Error) => {
      throw new Error(`the sealed credential does not open again: ${e.message}`);
    });
    let revision: number;
    try {
      const res = await withDeadline(this.client.if(key, 'Create', '==', 0).then(this.client.put(key).value(text)).commit(), this.o.callMs, 'write the credential');
      // 130 random bits: a clash means someone wrote this key by hand; never overwrite it.
      if (!res.succeeded) throw new ControlError('conflict', `${key} already exists; try again`);
      revision = Number(res.header.revision);
    } catch (e) {
      if (e instanceof ControlError) throw e;
      revision = await this.landedAnyway(key, text, accessKeyId, e as Error);
    }
    // Through the same path as the watch (decrypted again in the HSM): a value this member could not
    // read back is not reported as created.
    if (this.registry) await this.enqueue(() => this.applyPut(key, Buffer.from(text), revision, 'own write'));
    return { accessKeyId, secret, key, revision };
  }

  /**
   * A write that failed may still have been committed (etcd answered after our deadline, or the
   * connection broke after the commit): read the key once. Our own value there means the credential
   * exists and is reported as made (the caller gets the secret it must hand to KMS); nothing there
   * means it was not written. When even that read fails, the error says what to check, since a
   * credential nobody holds would otherwise count as one of the key store's credentials.
   */
  private async landedAnyway(key: string, text: string, accessKeyId: string, cause: Error): Promise<number> {
    let got: { value: string; modRevision: number } | undefined;
    try {
      const res = await withDeadline(this.client.get(key).exec(), this.o.callMs, 'read the credential back');
      const kv = res.kvs[0];
      if (kv) got = { value: kv.value.toString(), modRevision: Number(kv.mod_revision) };
    } catch (e) {
      throw new Error(`${cause.message}; whether it was written is unknown (${(e as Error).message}): check 'xks-proxy credentials list' and remove ${accessKeyId} if it is listed`);
    }
    if (got?.value === text) {
      this.o.log.warn('fleet credential write answered with an error but was committed; reporting it as created', { key, reason: cause.message });
      return got.modRevision;
    }
    throw cause;
  }

  /**
   * Deletes a credential from etcd. `othersHere` are the key store's other credentials that do not
   * come from the fleet (inline, folder) on this member: without one, the removal is refused when
   * no other fleet credential of the key store that this member accepted would remain, and it is
   * made conditional on those staying as read.
   */
  async remove(keyStore: string, accessKeyId: string, othersHere: readonly string[]): Promise<{ revision: number }> {
    const key = this.keyOf(keyStore, accessKeyId);
    for (let attempt = 1; attempt <= MAX_TXN_ATTEMPTS; attempt++) {
      const res = await withDeadline(this.client.getAll().prefix(`${this.keyPrefix}${keyStore}/`).exec(), this.o.callMs, 'read the key store\'s credentials');
      const target = res.kvs.find((kv) => kv.key.toString() === key);
      if (!target) throw new ControlError('not-found', `the fleet has no credential ${accessKeyId} for key store ${keyStore}`);
      const survivors = othersHere.length ? [] : res.kvs.filter((kv) => kv !== target && this.accepted.has(kv.key.toString()));
      if (!othersHere.length && survivors.length === 0) throw new ControlError('conflict', `refusing to remove the last credential of key store ${keyStore}: KMS could no longer connect. Add the new one first.`);
      let txn = this.client.if(key, 'Mod', '==', Number(target.mod_revision));
      for (const kv of survivors) txn = txn.and(kv.key.toString(), 'Mod', '==', Number(kv.mod_revision));
      const done = await withDeadline(txn.then(this.client.delete().key(key)).commit(), this.o.callMs, 'delete the credential');
      if (done.succeeded) {
        const revision = Number(done.header.revision);
        if (this.registry) await this.enqueue(() => this.applyDelete(key, revision, 'own write'));
        return { revision };
      }
      this.o.log.debug('fleet credentials changed concurrently; retrying the removal', { keyStore, accessKeyId, attempt });
    }
    throw new ControlError('conflict', `the credentials of key store ${keyStore} kept changing under this removal; try again`);
  }

  /** Access key ids in etcd and who sealed them (no decryption): `credentials list`. */
  async list(): Promise<{ keyStore: string; accessKeyId: string; createdAt?: string; createdBy?: string }[]> {
    const all = await withDeadline(this.client.getAll().prefix(this.keyPrefix).strings(), this.o.callMs, 'list the credentials');
    return Object.entries(all).flatMap(([k, v]) => {
      const n = this.nameOf(k);
      if (!n) return [];
      let meta: { createdAt?: string; createdBy?: string } = {};
      try {
        const j = JSON.parse(v) as { createdAt?: unknown; createdBy?: unknown };
        meta = { ...(typeof j.createdAt === 'string' ? { createdAt: j.createdAt } : {}), ...(typeof j.createdBy === 'string' ? { createdBy: j.createdBy } : {}) };
      } catch {
        /* listed without metadata; a member refuses it when it loads it */
      }
      return [{ ...n, ...meta }];
    });
  }

  // ---- members: load, then follow the watch ---------------------------------------------------

  /** Loads every credential into `registry` once (the CLI's view, or a member's first read). */
  async load(registry: KeyStoreRegistry, audit?: AdminActionSink): Promise<number> {
    this.registry = registry;
    this.audit = audit;
    let revision = 0;
    await this.enqueue(async () => {
      revision = await this.resync('load');
    });
    return revision;
  }

  /**
   * A member: loads every credential, then follows the prefix's watch. Never throws: while etcd
   * does not answer it retries, and the key stores keep their inline and folder credentials.
   */
  async follow(registry: KeyStoreRegistry, audit: AdminActionSink): Promise<void> {
    try {
      const revision = await this.load(registry, audit);
      this.o.log.info('fleet credentials loaded', { prefix: this.keyPrefix, revision, credentials: [...this.accepted.values()].map((a) => `${a.keyStore}/${a.accessKeyId}`) });
      await this.openWatch(revision);
    } catch (e) {
      this.o.log.error('fleet credentials cannot be read from etcd; retrying (inline and folder credentials keep working)', { prefix: this.keyPrefix, reason: (e as Error).message });
      if (!this.closed) this.retry = setTimeout(() => void this.follow(registry, audit), RETRY_MS).unref();
    }
  }

  private async openWatch(fromRevision: number): Promise<void> {
    const w = await this.client.watch().prefix(this.keyPrefix).startRevision(String(fromRevision + 1)).create();
    if (this.closed) {
      void w.cancel();
      return;
    }
    this.watcher = w;
    w.on('put', (kv: IKeyValue) => void this.enqueue(() => this.applyPut(kv.key.toString(), kv.value, Number(kv.mod_revision), 'etcd-watch')));
    // A delete event's mod_revision is the revision of the deletion.
    w.on('delete', (kv: IKeyValue) => void this.enqueue(() => this.applyDelete(kv.key.toString(), Number(kv.mod_revision), 'etcd-watch')));
    // Back after a disconnection: the client resumes from its last revision; a full read as well
    // costs little and also catches what a compacted history would have lost.
    w.on('connected', () => void this.enqueue(async () => void (await this.resync('etcd-watch-reconnected'))));
    w.on('disconnected', (e: Error) => this.o.log.warn('fleet credentials: the watch is disconnected; changes apply once it is back', { prefix: this.keyPrefix, reason: e.message }));
    w.on('error', (e: Error) => {
      this.o.log.error('fleet credentials: the watch failed; reading again and watching anew', { prefix: this.keyPrefix, reason: e.message });
      if (this.watcher === w) this.watcher = undefined;
      void w.cancel().catch(() => undefined);
      if (this.registry && this.audit && !this.closed) {
        const [registry, audit] = [this.registry, this.audit];
        this.retry = setTimeout(() => void this.follow(registry, audit), RETRY_MS).unref();
      }
    });
  }

  /** Handles `f` after every event before it, then hands the accepted set to the registry. */
  private enqueue(f: () => Promise<void>): Promise<void> {
    const next = this.queue.then(f).finally(() => this.publish());
    this.queue = next.catch((e: Error) => {
      this.o.log.error('fleet credentials: an update failed', { reason: e.message });
    });
    return next;
  }

  private publish(): void {
    if (!this.registry) return;
    const byKeyStore = new Map<string, Map<string, FleetSecret>>();
    for (const a of this.accepted.values()) {
      const m = byKeyStore.get(a.keyStore) ?? new Map<string, FleetSecret>();
      m.set(a.accessKeyId, { secret: a.secret, createdAtMs: a.createdAtMs });
      byKeyStore.set(a.keyStore, m);
    }
    this.registry.setFleetCredentials(byKeyStore);
  }

  /** Reads the whole prefix: every value applied, every key no longer there dropped. */
  private async resync(origin: string): Promise<number> {
    const res = await withDeadline(this.client.getAll().prefix(this.keyPrefix).exec(), this.o.callMs, 'read the fleet credentials');
    const revision = Number(res.header.revision);
    const present = new Set<string>();
    for (const kv of res.kvs) {
      present.add(kv.key.toString());
      await this.applyPut(kv.key.toString(), kv.value, Number(kv.mod_revision), origin);
    }
    for (const key of [...this.accepted.keys()]) if (!present.has(key)) await this.applyDelete(key, revision, origin);
    for (const key of [...this.hsmRetries.keys()]) if (!present.has(key)) this.hsmRetries.delete(key);
    for (const key of [...this.refusedKeys]) if (!present.has(key)) this.refusedKeys.delete(key);
    return revision;
  }

  private fresh(key: string, revision: number): boolean {
    if ((this.handled.get(key) ?? 0) >= revision) return false;
    this.handled.set(key, revision);
    return true;
  }

  private async applyPut(key: string, value: Buffer, revision: number, origin: string): Promise<void> {
    if (!this.fresh(key, revision)) return;
    const name = this.nameOf(key);
    const had = this.accepted.get(key);
    // Whatever was accepted under this key is replaced by the new value, or by nothing.
    this.accepted.delete(key);
    if (!name) return this.refused(key, undefined, revision, origin, 'the key is not credentials/<keyStore>/<accessKeyId> with a valid key store name and access key id', had !== undefined);
    let opened: Awaited<ReturnType<typeof openCredential>>;
    try {
      opened = await openCredential(this.cipher, { prefix: this.o.prefix, ...name }, value.toString('utf8'), this.o.wrapKeyLabel);
    } catch (e) {
      if (!(e instanceof CredentialRefused) || e.retryable) return this.notYet(key, name, revision, origin, e instanceof CredentialRefused ? e.message : 'the value could not be checked', had !== undefined);
      this.hsmRetries.delete(key);
      return this.refused(key, name, revision, origin, e.message, had !== undefined);
    }
    this.hsmRetries.delete(key);
    this.refusedKeys.delete(key);
    const createdAtMs = Date.parse(opened.meta.createdAt);
    this.accepted.set(key, { ...name, secret: opened.secret, createdAtMs: Number.isFinite(createdAtMs) ? createdAtMs : undefined });
    if (had?.secret === opened.secret) return;
    this.o.log.info('fleet credential accepted', { keyStore: name.keyStore, accessKeyId: name.accessKeyId, revision, createdBy: opened.meta.createdBy, createdAt: opened.meta.createdAt, origin });
    this.record({ operator: opened.meta.createdBy, action: 'credentials.fleet-add', keyStore: name.keyStore, accessKeyId: name.accessKeyId, outcome: 'ok', detail: `applied from etcd revision ${revision}; sealed by ${opened.meta.createdBy} at ${opened.meta.createdAt} with HSM key ${opened.meta.wrapKeyLabel}` });
  }

  private async applyDelete(key: string, revision: number, origin: string): Promise<void> {
    if (!this.fresh(key, revision)) return;
    this.hsmRetries.delete(key);
    this.refusedKeys.delete(key);
    const had = this.accepted.get(key);
    if (!had) return;
    this.accepted.delete(key);
    this.o.log.info('fleet credential removed', { keyStore: had.keyStore, accessKeyId: had.accessKeyId, revision, origin });
    this.record({ operator: this.o.nodeId, action: 'credentials.fleet-remove', keyStore: had.keyStore, accessKeyId: had.accessKeyId, outcome: 'ok', detail: `applied from etcd revision ${revision}` });
  }

  /** No verdict from the HSM: not accepted now (fail closed), read again later. Reported once per value. */
  private notYet(key: string, name: { keyStore: string; accessKeyId: string }, revision: number, origin: string, reason: string, dropped: boolean): void {
    const attempts = (this.hsmRetries.get(key) ?? 0) + 1;
    this.hsmRetries.set(key, attempts);
    // Forget the revision, so that the next full read handles this value again.
    this.handled.delete(key);
    if (attempts === 1) this.refused(key, name, revision, origin, `${reason}; not accepted until the HSM answers (tried again, backing off)`, dropped);
    if (this.hsmRetry || this.closed) return;
    const delay = Math.min(MAX_HSM_RETRY_MS, RETRY_MS * 2 ** Math.min(16, Math.max(...this.hsmRetries.values()) - 1));
    this.hsmRetry = setTimeout(() => {
      this.hsmRetry = undefined;
      void this.enqueue(async () => void (await this.resync('hsm-retry')));
    }, delay).unref();
  }

  private refused(key: string, name: { keyStore: string; accessKeyId: string } | undefined, revision: number, origin: string, reason: string, dropped: boolean): void {
    this.refusedKeys.add(key);
    this.o.log.error('fleet credential REFUSED: not accepted on this member (fail closed); the other credentials keep working', { key, revision, reason, origin, ...(dropped ? { dropped: 'the credential previously accepted under this key is no longer accepted' } : {}) });
    this.record({ operator: this.o.nodeId, action: 'credentials.fleet-refused', keyStore: name?.keyStore, accessKeyId: name?.accessKeyId, outcome: 'error', errorName: 'CredentialRefused', detail: `${key} at etcd revision ${revision}: ${reason}` });
  }

  private record(r: Omit<AdminActionRecord, 'time' | 'via'>): void {
    this.audit?.({ time: new Date(this.now()).toISOString(), via: 'etcd', ...r });
  }

  /** What this member holds from the fleet now: accepted credentials, and values it refuses (xks_fleet_credentials_*). */
  counts(): { accepted: number; refused: number } {
    return { accepted: this.accepted.size, refused: this.refusedKeys.size };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    if (this.hsmRetry) clearTimeout(this.hsmRetry);
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await w.cancel().catch(() => undefined);
    await this.queue;
  }
}
