/**
 * Counts the encryptions and decrypts of each key version, so that a version is rotated before
 * the AES-GCM limit for random 96-bit IVs (NIST SP 800-38D section 8.3: at most 2^32 invocations
 * per key) and an operator can see when an old version stops being used.
 *
 * Encryptions are counted BEFORE they happen, in blocks: a process appends "I reserve n
 * encryptions of version v" to the key's ledger file and syncs it, and only then spends them. A
 * crash (kill -9) loses at most the unspent rest of the blocks held (keyVersions.reserveBlock per
 * process), and the loss is always an over-count, never an under-count.
 *
 * One file per key in keyVersions.usageDir, appended with O_APPEND by every process of the proxy
 * (server.workers): POSIX makes each small append atomic and orders them, so the file is the one
 * shared count without a lock. To know how much of its block a process may spend, it re-reads the
 * file up to and including its own record (found by a nonce): the encryptions reserved before it
 * are exact, whichever worker wrote them. Lines:
 *
 *   e <version> <n> <unix ms> <nonce>     n encryptions reserved
 *   d <version> <n> <unix ms>             n decrypts done (written every flushIntervalMs)
 *
 * A torn line (power lost mid-write) counts nothing; every write starts with a newline so that
 * it cannot merge with one.
 *
 * Without usageDir the counts live in memory only (lost on restart); the proxy warns at startup.
 *
 * A fleet (control.store: etcd) encrypts under the same HSM keys from several hosts, so the
 * encryption count must be the fleet's: with a SharedEncryptionCounter (useShared), blocks are
 * reserved there instead (one etcd transaction per block, src/control/etcd-encryption-counter.ts)
 * and the file keeps only the decrypt counts. The hot path stays local: a request spends from
 * the block its process holds; only the request that finds it empty waits for the next
 * reservation, and concurrent ones share that one.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface VersionUsage {
  /** Encryptions counted (reserved: an upper bound of those done). */
  encryptions: number;
  decrypts: number;
  /** Unix ms of the last decrypt counted, if any. */
  lastDecryptMs: number | undefined;
  /** Unix ms of the first record about this version in the ledger. */
  firstSeenMs: number | undefined;
}

/**
 * Where a fleet's encryption counts are kept: reserve() adds up to `want` encryptions of a key
 * version to the fleet's count atomically, never past `limit`, and says how many it granted and
 * the count before them. `seed` is this host's own count, for a version the fleet store does not
 * know yet (the count from before fleet mode is not lost).
 */
export interface SharedEncryptionCounter {
  reserve(label: string, version: number, want: number, limit: number, seed: number): Promise<{ before: number; granted: number }>;
  /** Where the counts live, for messages (e.g. "etcd /xks/key-usage/"). */
  readonly location: string;
  /**
   * Publishes this process's decrypts of a version since it started and the time of the last one
   * (on the flush interval, never per request), so that a retirement anywhere in the fleet sees
   * every member's last use.
   */
  noteDecrypts(label: string, version: number, decrypts: number, lastDecryptMs: number): Promise<void>;
  /**
   * When the store cannot be reached, may a process go on with one block of its own per version,
   * owed to the fleet count and paid at the next reservation? (Fleet mode with
   * control.etcd.keepLastKnownMs: the operator chose availability; docs/runbook-key-rotation.md.)
   */
  readonly borrowWhenUnreachable: boolean;
}

export interface UsageLedgerOptions {
  /** Folder of the ledger files; undefined: in memory only. */
  dir: string | undefined;
  reserveBlock: number;
  now?: () => number;
  /** Told when a block is borrowed because the shared count could not be reached (logged). */
  onBorrow?: (version: number, n: number, cause: unknown) => void;
  /** Told when a block reserved ahead in the ledger file failed (the next request tries again). */
  onReserveError?: (version: number, cause: unknown) => void;
}

interface KeyLedger {
  file: string | undefined;
  /** Bytes of the file already folded into `totals`. */
  offset: number;
  partial: string;
  totals: Map<number, VersionUsage>;
  /** version -> encryptions this process reserved and has not spent yet. */
  spare: Map<number, number>;
  /** version -> decrypts not yet written. */
  pendingDecrypts: Map<number, number>;
  /** Fleet mode: version -> the fleet's count after this process's last reservation. */
  fleetCount: Map<number, number>;
  /** version -> the reservation in flight, in etcd or in the ledger file (concurrent requests wait for the same one). */
  reserving: Map<number, Promise<boolean>>;
  /** Fleet mode: version -> encryptions borrowed while the store was unreachable, not yet in the fleet count. */
  owed: Map<number, number>;
  label: string;
  /** Fleet mode: version -> decrypts by this process since it started, and the last, not yet published. */
  decryptsToPublish: Map<number, { decrypts: number; lastMs: number }>;
  /** Fleet mode: version -> decrypts by this process since it started. */
  decryptsSinceStart: Map<number, number>;
  /** Nonces of this process's reservations being flushed -> the encryptions reserved before each (once read). */
  awaited: Map<string, number | undefined>;
}

function emptyUsage(): VersionUsage {
  return { encryptions: 0, decrypts: 0, lastDecryptMs: undefined, firstSeenMs: undefined };
}

/** The ledger file of the key labelled `label` (any label: the name is a digest of it). */
export function ledgerFile(dir: string, label: string): string {
  return path.join(dir, `${crypto.createHash('sha256').update(label, 'utf8').digest('hex').slice(0, 32)}.usage`);
}

export class UsageLedger {
  private readonly keys = new Map<string, KeyLedger>();
  private readonly now: () => number;
  private nonceCounter = 0;
  private shared: SharedEncryptionCounter | undefined;
  private readonly noncePrefix = `${process.pid}.${crypto.randomBytes(4).toString('hex')}`;

  constructor(private readonly opts: UsageLedgerOptions) {
    this.now = opts.now ?? Date.now;
    if (opts.dir !== undefined) fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  }

  get persistent(): boolean {
    return this.opts.dir !== undefined;
  }

  /** Fleet mode: count encryptions in `counter` from now on (set before the first Encrypt). */
  useShared(counter: SharedEncryptionCounter): void {
    this.shared = counter;
  }

  get sharedLocation(): string | undefined {
    return this.shared?.location;
  }

  private ledger(label: string): KeyLedger {
    let l = this.keys.get(label);
    if (!l) {
      l = { file: this.opts.dir === undefined ? undefined : ledgerFile(this.opts.dir, label), offset: 0, partial: '', totals: new Map(), spare: new Map(), pendingDecrypts: new Map(), fleetCount: new Map(), reserving: new Map(), owed: new Map(), label, decryptsToPublish: new Map(), decryptsSinceStart: new Map(), awaited: new Map() };
      this.keys.set(label, l);
    }
    return l;
  }

  private usage(l: KeyLedger, version: number): VersionUsage {
    let u = l.totals.get(version);
    if (!u) {
      u = emptyUsage();
      l.totals.set(version, u);
    }
    return u;
  }

  /**
   * Folds the lines appended since the last read into the totals. With `nonce`, returns the
   * encryptions of `version` reserved before the line carrying it (undefined if not met).
   */
  private catchUp(l: KeyLedger, nonce?: string, version?: number): number | undefined {
    if (l.file === undefined) return undefined;
    let text: string;
    try {
      const fd = fs.openSync(l.file, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        if (size <= l.offset) return undefined;
        const buf = Buffer.alloc(size - l.offset);
        const n = fs.readSync(fd, buf, 0, buf.length, l.offset);
        l.offset += n;
        text = l.partial + buf.subarray(0, n).toString('utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const lines = text.split('\n');
    l.partial = lines.pop() ?? '';
    let before: number | undefined;
    for (const line of lines) {
      const fields = line.split(' ');
      const [kind, v, n, t, lineNonce] = fields;
      const ver = Number(v);
      const count = Number(n);
      const at = Number(t);
      // A torn or foreign line counts nothing: every field must be there and be a number.
      if (fields.length !== (kind === 'e' ? 5 : kind === 'd' ? 4 : -1) || !Number.isSafeInteger(ver) || !Number.isSafeInteger(count) || count < 0 || !Number.isSafeInteger(at)) continue;
      const u = this.usage(l, ver);
      u.firstSeenMs ??= at;
      if (kind === 'e') {
        if (nonce !== undefined && lineNonce === nonce && ver === version) before = u.encryptions;
        // A reservation of ours still being flushed: whoever reads its line first notes what was
        // reserved before it, for reserveInFile to find.
        if (lineNonce !== undefined && l.awaited.has(lineNonce)) l.awaited.set(lineNonce, u.encryptions);
        u.encryptions += count;
      } else {
        u.decrypts += count;
        u.lastDecryptMs = Math.max(u.lastDecryptMs ?? 0, at);
      }
    }
    return before;
  }

  private append(l: KeyLedger, lines: string): void {
    if (l.file === undefined) return;
    const fd = fs.openSync(l.file, 'a', 0o600);
    try {
      // The leading newline ends a line torn by a crash mid-write, so that it cannot swallow this
      // record (the torn line counts nothing; empty lines are skipped).
      fs.writeSync(fd, '\n' + lines);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Counts one encryption of `version` if the version has not reached `limit`; false when it
   * has (the caller must not encrypt). Writes to disk once per reserveBlock encryptions.
   */
  tryEncrypt(label: string, version: number, limit: number): boolean {
    const l = this.ledger(label);
    const spare = l.spare.get(version) ?? 0;
    if (spare > 0) {
      l.spare.set(version, spare - 1);
      return true;
    }
    this.catchUp(l);
    const u = this.usage(l, version);
    if (u.encryptions >= limit) return false;
    const n = Math.min(this.opts.reserveBlock, limit - u.encryptions);
    const at = this.now();
    if (l.file === undefined) {
      u.firstSeenMs ??= at;
      u.encryptions += n;
      l.spare.set(version, n - 1);
      return true;
    }
    const nonce = `${this.noncePrefix}.${++this.nonceCounter}`;
    this.append(l, `e ${version} ${n} ${at} ${nonce}\n`);
    // Another worker may have reserved between our read and our append: what we may spend is
    // what is left under the limit after everything written before our line.
    const before = this.catchUp(l, nonce, version);
    const usable = before === undefined ? 0 : Math.max(0, Math.min(n, limit - before));
    if (usable === 0) return false;
    l.spare.set(version, usable - 1);
    return true;
  }

  /**
   * Counts one encryption of `version` if the version has not reached `limit` (false: the caller
   * must not encrypt). Without a shared counter, tryEncrypt. With one, the count is the fleet's:
   * a block is reserved there (one transaction) when this process's block is spent.
   */
  async reserveEncryption(label: string, version: number, limit: number): Promise<boolean> {
    const shared = this.shared;
    const l = this.ledger(label);
    if (!shared && l.file === undefined) return this.tryEncrypt(label, version, limit);
    const reserve = () => {
      let r = l.reserving.get(version);
      if (!r) {
        r = (shared ? this.reserveShared(shared, l, label, version, limit) : this.reserveInFile(l, version, limit)).finally(() => l.reserving.delete(version));
        l.reserving.set(version, r);
      }
      return r;
    };
    for (;;) {
      const spare = l.spare.get(version) ?? 0;
      if (spare > 0) {
        l.spare.set(version, spare - 1);
        // The ledger file: the next block is reserved (written and flushed to disk) in the
        // background while this one still has encryptions, so that a request never waits for the
        // disk flush (fdatasync) a block costs; a crash loses at most this one and the next.
        // (Not with blocks under 4: an operator who chose such small blocks wants exact counts.)
        const lowWater = Math.floor(this.opts.reserveBlock / 4);
        if (!shared && lowWater > 0 && spare - 1 <= lowWater && !l.reserving.has(version)) {
          reserve().catch((e: unknown) => this.opts.onReserveError?.(version, e));
        }
        return true;
      }
      // Granted: take one of the block (others waiting may have spent it first: reserve again).
      if (!(await reserve())) return false;
    }
  }

  /** Resolves once the reservations in flight now (etcd, or the ledger file ahead of time) have ended, either way. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.keys.values()].flatMap((l) => [...l.reserving.values()]));
  }

  /**
   * tryEncrypt's reservation without blocking the event loop: the line is appended and flushed
   * (fdatasync) on libuv's thread pool, then the file is read up to it, as tryEncrypt does. Resolves
   * true when encryptions were added to the spare ones, false at the limit.
   */
  private async reserveInFile(l: KeyLedger, version: number, limit: number): Promise<boolean> {
    this.catchUp(l);
    const u = this.usage(l, version);
    if (u.encryptions >= limit) return false;
    const n = Math.min(this.opts.reserveBlock, limit - u.encryptions);
    const nonce = `${this.noncePrefix}.${++this.nonceCounter}`;
    // Other reads of the file (metrics, decrypt counts, another version) may run while this one is
    // flushed, and fold our line in first: they note for us what was reserved before it.
    l.awaited.set(nonce, undefined);
    let before: number | undefined;
    try {
      const fh = await fs.promises.open(l.file!, 'a', 0o600);
      try {
        // The leading newline ends a line torn by a crash mid-write (see append()).
        await fh.write(`\ne ${version} ${n} ${this.now()} ${nonce}\n`);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      // Another process may have reserved between our read and our append (see tryEncrypt).
      this.catchUp(l);
      before = l.awaited.get(nonce);
    } finally {
      l.awaited.delete(nonce);
    }
    const usable = before === undefined ? 0 : Math.max(0, Math.min(n, limit - before));
    if (usable === 0) return false;
    l.spare.set(version, (l.spare.get(version) ?? 0) + usable);
    return true;
  }

  /** Resolves true when there may be spare encryptions now (the caller looks again), false at the limit. */
  private async reserveShared(shared: SharedEncryptionCounter, l: KeyLedger, label: string, version: number, limit: number): Promise<boolean> {
    this.catchUp(l);
    const seed = l.totals.get(version)?.encryptions ?? 0;
    const owed = l.owed.get(version) ?? 0;
    let r: { before: number; granted: number };
    try {
      // What was borrowed while the store was unreachable is added to the fleet count first.
      r = await shared.reserve(label, version, this.opts.reserveBlock + owed, limit, seed);
    } catch (e) {
      if (!shared.borrowWhenUnreachable) throw e;
      return this.borrow(l, version, limit, e);
    }
    l.fleetCount.set(version, Math.max(l.fleetCount.get(version) ?? 0, r.before + r.granted));
    this.usage(l, version).firstSeenMs ??= this.now();
    const paid = Math.min(owed, r.granted);
    if (owed > 0) l.owed.set(version, owed - paid);
    if (r.granted === 0) return false;
    l.spare.set(version, (l.spare.get(version) ?? 0) + r.granted - paid);
    return true;
  }

  /**
   * The fleet count cannot be reached and the operator chose availability: one block, within what
   * this process last knew of the limit, owed to the fleet count. No second block until it is paid.
   */
  private borrow(l: KeyLedger, version: number, limit: number, cause: unknown): boolean {
    const owed = l.owed.get(version) ?? 0;
    const room = limit - (l.fleetCount.get(version) ?? 0) - owed;
    if (owed > 0 || room <= 0) throw cause;
    const n = Math.min(this.opts.reserveBlock, room);
    l.owed.set(version, n);
    l.spare.set(version, (l.spare.get(version) ?? 0) + n);
    this.opts.onBorrow?.(version, n, cause);
    return true;
  }

  recordDecrypt(label: string, version: number): void {
    const l = this.ledger(label);
    l.pendingDecrypts.set(version, (l.pendingDecrypts.get(version) ?? 0) + 1);
    if (this.shared) {
      const n = (l.decryptsSinceStart.get(version) ?? 0) + 1;
      l.decryptsSinceStart.set(version, n);
      l.decryptsToPublish.set(version, { decrypts: n, lastMs: this.now() });
    }
    if (l.file === undefined) this.flushKey(l);
  }

  private flushKey(l: KeyLedger): void {
    const at = this.now();
    const lines: string[] = [];
    for (const [v, n] of l.pendingDecrypts) {
      if (n === 0) continue;
      if (l.file === undefined) {
        const u = this.usage(l, v);
        u.decrypts += n;
        u.lastDecryptMs = at;
        u.firstSeenMs ??= at;
      }
      lines.push(`d ${v} ${n} ${at}\n`);
    }
    l.pendingDecrypts.clear();
    if (lines.length) this.append(l, lines.join(''));
  }

  /**
   * Writes the decrypt counts not yet on disk (on an interval and at close); in fleet mode also
   * publishes them to the shared store (failures go to onPublishError: the local file has them).
   */
  flush(onPublishError?: (e: unknown) => void): void {
    for (const l of this.keys.values()) {
      this.flushKey(l);
      const shared = this.shared;
      if (!shared) continue;
      for (const [v, d] of l.decryptsToPublish) shared.noteDecrypts(l.label, v, d.decrypts, d.lastMs).catch((e: unknown) => onPublishError?.(e));
      l.decryptsToPublish.clear();
    }
  }

  /**
   * Encryptions of `version` and when it was first seen, as this process last read them (at most
   * one block behind): cheap enough for every Encrypt.
   */
  lastKnown(label: string, version: number): { encryptions: number; firstSeenMs: number | undefined } {
    const l = this.keys.get(label);
    const u = l?.totals.get(version);
    return { encryptions: Math.max(u?.encryptions ?? 0, l?.fleetCount.get(version) ?? 0), firstSeenMs: u?.firstSeenMs };
  }

  /** Per-version usage of `label` as the ledger knows it now (pending decrypts included). */
  usageOf(label: string): Map<number, VersionUsage> {
    const l = this.ledger(label);
    this.catchUp(l);
    const out = new Map<number, VersionUsage>();
    for (const [v, u] of l.totals) out.set(v, { ...u });
    // Fleet mode: encryptions are the fleet's count as of this process's last reservation.
    for (const [v, n] of l.fleetCount) {
      const u = out.get(v) ?? emptyUsage();
      u.encryptions = Math.max(u.encryptions, n);
      out.set(v, u);
    }
    for (const [v, n] of l.pendingDecrypts) {
      const u = out.get(v) ?? emptyUsage();
      u.decrypts += n;
      u.lastDecryptMs = this.now();
      out.set(v, u);
    }
    return out;
  }
}
