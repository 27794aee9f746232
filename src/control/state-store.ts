/**
 * The durable control state: <stateDir>/state.json, authenticated inside the HSM.
 *
 * Format (version 2):
 *   { "format": "xks-proxy-control-state", "version": 2, "storeId": hex, "generation": N,
 *     "writtenAt": ISO, "body": { blocks, approvals, policies, history }, "mac": hex }
 * mac is HMAC-SHA256, computed and checked inside the HSM (state-auth.ts), over the canonical JSON
 * (keys sorted, no spaces) of every other field. The token also holds the highest generation
 * written for this storeId (the anchor). A file is trusted only if its MAC verifies, its storeId
 * is the anchor's and its generation is not below the anchor's. Everything else (bad MAC, older
 * generation, another store's file, a deleted file or folder, garbage) is TAMPERING: the proxy
 * fails closed, logs it at error level and audits it, until `xks-proxy killswitch repair`
 * (which leaves a proxy-scope block that only the lift quorum removes).
 *
 * Version 1 files (SHA-256 only, written before this) are never trusted silently: they fail
 * closed until an operator adopts one with `killswitch repair --adopt-unauthenticated`.
 *
 * Writes survive crash and kill -9 at any point: temp file (O_EXCL, 0600) -> write -> fsync ->
 * rename over state.json -> fsync of the folder, then the anchor in the token. A reader reads the
 * anchor first, then the file: a crash between file and anchor leaves a file one generation ahead
 * of the anchor, which verifies and moves the anchor forward. The previous good file is kept as
 * state.prev.json for `killswitch repair --from-backup`.
 *
 * Writers in several processes (the proxy, the emergency CLI) serialise on state.lock (O_EXCL,
 * holding pid); a lock whose holder is dead or that is older than STALE_LOCK_MS is broken.
 * Every change, and every move of the anchor, is made under the lock, so the anchor only grows.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { canonicalJson } from '../audit/canonical';
import { toXksError } from '../errors/xks-error';
import { ControlError, StateBody, emptyState } from './state-model';
import type { Anchor, StateAuthenticator } from './state-auth';
import { fsyncDir } from '../util/durable-fs';
import { processAlive } from '../util/process-lock';

export const STATE_FORMAT = 'xks-proxy-control-state';
export const STATE_VERSION = 2;
/** The unauthenticated format written before state authentication (adopted by repair only). */
const LEGACY_VERSION = 1;
export const STATE_FILE = 'state.json';
export const BACKUP_FILE = 'state.prev.json';
export const LOCK_FILE = 'state.lock';
export const MARKER_FILE = 'INITIALISED';
const STALE_LOCK_MS = 30_000;

export interface StoredState {
  storeId: string;
  generation: number;
  writtenAt: string;
  body: StateBody;
  /** Hex HMAC of the file (identifies the content: two states with one mac are the same). */
  mac: string;
  /** The store's revision of this state (etcd's mod revision; absent for the file store). */
  revision?: number | undefined;
}

export type ReadResult =
  | { ok: true; state: StoredState; /** the file is ahead of the token's anchor (a writer stopped between the two) */ ahead: boolean }
  | { ok: false; fresh: true }
  | {
      ok: false;
      fresh: false;
      reason: string;
      /** true: a change on disk the proxy did not make (audited as tampering); false: a fault (HSM unreachable, unknown content). */
      tamper: boolean;
      /** A version 1 file that passed its checksum, for `repair --adopt-unauthenticated`. */
      legacy?: StateBody;
    };

type Broken = Extract<ReadResult, { fresh: false }>;
const tampered = (reason: string): Broken => ({ ok: false, fresh: false, reason, tamper: true });
const fault = (reason: string): Broken => ({ ok: false, fresh: false, reason, tamper: false });

interface Envelope {
  storeId: string;
  generation: number;
  writtenAt: string;
  body: unknown;
}

/** The MAC input: every field but the MAC, canonical. */
function macInput(e: Envelope): Buffer {
  return Buffer.from(canonicalJson({ format: STATE_FORMAT, version: STATE_VERSION, storeId: e.storeId, generation: e.generation, writtenAt: e.writtenAt, body: e.body }), 'utf8');
}

export async function serializeState(auth: StateAuthenticator, e: Envelope & { body: StateBody }): Promise<{ text: string; state: StoredState }> {
  const mac = (await auth.mac(macInput(e))).toString('hex');
  const text = JSON.stringify({ format: STATE_FORMAT, version: STATE_VERSION, storeId: e.storeId, generation: e.generation, writtenAt: e.writtenAt, body: e.body, mac }, null, 2) + '\n';
  return { text, state: { ...e, mac } };
}

type Parsed = { ok: true; envelope: Envelope; mac: string } | { ok: false; reason: string; legacy?: StateBody };

/** Structure only (no MAC): what the file claims. */
function parseEnvelope(text: string): Parsed {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, reason: `not valid JSON (${text.length} bytes; truncated, corrupt or replaced)` };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: false, reason: 'not a JSON object' };
  const o = raw as Record<string, unknown>;
  if (o.format !== STATE_FORMAT) return { ok: false, reason: `unknown format ${JSON.stringify(o.format)}` };
  if (o.version === LEGACY_VERSION) {
    const legacy = parseLegacy(o);
    return { ok: false, reason: `an unauthenticated version ${LEGACY_VERSION} state file${legacy ? '' : ' that fails its own checksum'}`, ...(legacy ? { legacy } : {}) };
  }
  if (o.version !== STATE_VERSION) return { ok: false, reason: `unsupported version ${JSON.stringify(o.version)} (this proxy reads ${STATE_VERSION})` };
  if (typeof o.storeId !== 'string' || typeof o.generation !== 'number' || !Number.isInteger(o.generation) || typeof o.writtenAt !== 'string' || typeof o.mac !== 'string' || !/^[0-9a-f]{64}$/.test(o.mac)) {
    return { ok: false, reason: 'storeId, generation, writtenAt or mac missing or malformed' };
  }
  return { ok: true, envelope: { storeId: o.storeId, generation: o.generation, writtenAt: o.writtenAt, body: o.body }, mac: o.mac };
}

/** A version 1 file's body if its SHA-256 checks (it detects accidents, not an attacker). */
function parseLegacy(o: Record<string, unknown>): StateBody | undefined {
  const sum = crypto.createHash('sha256').update(canonicalJson({ format: STATE_FORMAT, version: LEGACY_VERSION, generation: o.generation, writtenAt: o.writtenAt, body: o.body })).digest('hex');
  if (typeof o.sha256 !== 'string' || sum !== o.sha256) return undefined;
  const b = StateBody.safeParse(o.body);
  return b.success ? b.data : undefined;
}

/**
 * Verifies a state file's text against the HSM: its MAC, its store, and (when given) the anchor.
 * Tampering and faults are told apart (see ReadResult).
 */
export async function verifyStateText(auth: StateAuthenticator, text: string, anchor: Anchor | undefined, label = STATE_FILE): Promise<ReadResult> {
  const p = parseEnvelope(text);
  if (!p.ok) {
    // An old-format file where the token has an anchor was put there after authentication began.
    if (p.legacy && anchor === undefined) return { ...fault(`${label} is ${p.reason}; adopt it with "xks-proxy killswitch repair --adopt-unauthenticated" (it keeps the proxy blocked until the lift quorum approves)`), legacy: p.legacy };
    return tampered(`${label} is ${p.reason}`);
  }
  const e = p.envelope;
  let good: boolean;
  try {
    good = await auth.verify(macInput(e), Buffer.from(p.mac, 'hex'));
  } catch (err) {
    return fault(`cannot verify ${label} with the HSM key "${auth.keyLabel}": ${describe(err)}`);
  }
  if (!good) return tampered(`${label}: the MAC does not verify with the HSM key "${auth.keyLabel}" (the file was changed outside the proxy)`);
  if (anchor === undefined) return tampered(`${label} verifies, but the token holds no generation record "${auth.anchorLabel}" for it (token object deleted, or control.stateAuth.anchorLabel changed)`);
  if (e.storeId !== anchor.storeId) return tampered(`${label} belongs to another state store (${e.storeId}, the token's record names ${anchor.storeId})`);
  if (e.generation < anchor.generation) return tampered(`${label} is generation ${e.generation}, older than generation ${anchor.generation} recorded in the HSM (an old file was put back: rollback)`);
  const body = StateBody.safeParse(e.body);
  if (!body.success) {
    const i = body.error.issues[0]!;
    return fault(`${label}: content invalid at ${i.path.join('.') || '(body)'}: ${i.message}`);
  }
  return { ok: true, state: { storeId: e.storeId, generation: e.generation, writtenAt: e.writtenAt, body: body.data, mac: p.mac }, ahead: e.generation > anchor.generation };
}

function describe(err: unknown): string {
  const x = toXksError(err);
  return x.detail ?? x.message ?? x.errorName;
}

async function readAnchor(auth: StateAuthenticator): Promise<{ ok: true; anchor: Anchor | undefined } | { ok: false; reason: string }> {
  try {
    return { ok: true, anchor: await auth.readAnchor() };
  } catch (e) {
    return { ok: false, reason: `cannot read the generation record "${auth.anchorLabel}" from the HSM: ${describe(e)}` };
  }
}

/** The anchor first, then the file (see the header): never a false rollback. */
async function readVerified(dir: string, auth: StateAuthenticator): Promise<{ result: ReadResult; anchor: Anchor | undefined; text: string | undefined }> {
  const a = await readAnchor(auth);
  if (!a.ok) return { result: fault(a.reason), anchor: undefined, text: undefined };
  const anchor = a.anchor;
  const file = path.join(dir, STATE_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    if (code !== 'ENOENT') return { result: fault(`cannot read ${file} (${code})`), anchor, text: undefined };
    const marker = fs.existsSync(path.join(dir, MARKER_FILE));
    if (anchor === undefined && !marker) return { result: { ok: false, fresh: true }, anchor, text: undefined };
    const why = anchor ? `the HSM records generation ${anchor.generation} of this store` : `${dir} was initialised (${MARKER_FILE} exists)`;
    return { result: tampered(`${file} is missing (state file or folder deleted), but ${why}`), anchor, text: undefined };
  }
  return { result: await verifyStateText(auth, text, anchor), anchor, text };
}

export async function readBackup(dir: string, auth: StateAuthenticator, anchor: Anchor | undefined): Promise<{ ok: true; state: StoredState } | { ok: false; reason: string }> {
  const file = path.join(dir, BACKUP_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    return { ok: false, reason: `cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  // The backup is older than the anchor by design: check MAC and store, not the generation.
  const r = await verifyStateText(auth, text, anchor && { storeId: anchor.storeId, generation: 0 }, BACKUP_FILE);
  return r.ok ? { ok: true, state: r.state } : { ok: false, reason: r.fresh ? 'missing' : r.reason };
}

/** temp file -> fsync -> rename -> fsync(dir). Synchronous: small, rare, and atomic for the event loop. */
export function atomicWrite(dir: string, name: string, text: string, syncDir = true): void {
  const tmp = path.join(dir, `.${name}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, path.join(dir, name));
  if (syncDir) fsyncDir(dir);
}

function tryLock(lockFile: string): boolean {
  try {
    const fd = fs.openSync(lockFile, 'wx', 0o600);
    fs.writeSync(fd, JSON.stringify({ pid: process.pid, host: os.hostname(), at: Date.now() }));
    fs.closeSync(fd);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  // Held: break it if its holder is gone (kill -9 while holding) or it is implausibly old.
  try {
    const st = fs.statSync(lockFile);
    const holder = JSON.parse(fs.readFileSync(lockFile, 'utf8')) as { pid?: number; host?: string };
    const sameHost = holder.host === os.hostname();
    const dead = sameHost && typeof holder.pid === 'number' && holder.pid !== process.pid && !processAlive(holder.pid);
    if (dead || Date.now() - st.mtimeMs > STALE_LOCK_MS) fs.rmSync(lockFile, { force: true });
  } catch {
    // Unreadable or half-written lock (its writer was killed between open and write).
    try {
      if (Date.now() - fs.statSync(lockFile).mtimeMs > 1000) fs.rmSync(lockFile, { force: true });
    } catch {
      /* gone meanwhile */
    }
  }
  return false;
}

export type RepairSource = 'empty' | 'backup' | 'adopt-unauthenticated';

export class StateStore {
  readonly file: string;
  constructor(
    readonly dir: string,
    readonly auth: StateAuthenticator,
    private readonly lockTimeoutMs = 5000,
  ) {
    this.file = path.join(dir, STATE_FILE);
  }

  /** Creates the folder (0700) if needed. */
  ensureDir(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  /**
   * The verified state. A file ahead of the anchor (a writer stopped between writing the file and
   * the anchor) moves the anchor forward, under the lock, so that the file it replaced can never
   * be put back.
   */
  async read(): Promise<ReadResult> {
    const { result } = await readVerified(this.dir, this.auth);
    if (!result.ok || !result.ahead) return result;
    try {
      await this.withLock(async () => {
        const a = await this.auth.readAnchor();
        if (a && a.storeId === result.state.storeId && a.generation < result.state.generation) await this.auth.writeAnchor({ storeId: a.storeId, generation: result.state.generation });
      });
    } catch (e) {
      return fault(`${this.file} is ahead of the HSM's generation record, which cannot be moved forward: ${describe(e)}`);
    }
    return { ...result, ahead: false };
  }

  private async withLock<T>(f: () => Promise<T>): Promise<T> {
    this.ensureDir();
    const lockFile = path.join(this.dir, LOCK_FILE);
    const deadline = Date.now() + this.lockTimeoutMs;
    let wait = 2;
    while (!tryLock(lockFile)) {
      if (Date.now() > deadline) throw new ControlError('lock-timeout', `could not take ${lockFile} within ${this.lockTimeoutMs} ms`);
      // Back-off between attempts to take a lock held by another process (not test synchronisation).
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 50);
    }
    try {
      return await f();
    } finally {
      fs.rmSync(lockFile, { force: true });
    }
  }

  /**
   * Write `body` as the generation after both the file's and the anchor's; keeps the previous
   * text as the backup; then moves the anchor. Caller holds the lock.
   */
  private async writeNext(storeId: string, after: number, prevText: string | undefined, body: StateBody, nowMs: number): Promise<StoredState> {
    const generation = after + 1;
    const writtenAt = new Date(nowMs).toISOString();
    const { text, state } = await serializeState(this.auth, { storeId, generation, writtenAt, body });
    // The folder fsync after state.json's rename also makes the backup's rename durable.
    if (prevText !== undefined) atomicWrite(this.dir, BACKUP_FILE, prevText, false);
    atomicWrite(this.dir, STATE_FILE, text);
    if (!fs.existsSync(path.join(this.dir, MARKER_FILE))) atomicWrite(this.dir, MARKER_FILE, `initialised ${writtenAt}\n`);
    // File first, anchor second (see the header).
    await this.auth.writeAnchor({ storeId, generation });
    return state;
  }

  /**
   * Read-modify-write under the lock. A fresh folder starts from the empty state; a state that
   * does not verify refuses every change (ControlError fail-closed): only repair() may replace it.
   */
  mutate<R>(f: (body: StateBody) => { body: StateBody; result: R }, nowMs: () => number = Date.now): Promise<{ state: StoredState; result: R }> {
    return this.withLock(async () => {
      const { result: cur, anchor, text } = await readVerified(this.dir, this.auth);
      if (!cur.ok && !cur.fresh) throw new ControlError('fail-closed', `state not trusted, changes refused until it is repaired: ${cur.reason}`);
      const prev = cur.ok ? cur.state : undefined;
      const { body, result } = f(prev?.body ?? emptyState());
      const storeId = prev?.storeId ?? newStoreId();
      const state = await this.writeNext(storeId, Math.max(prev?.generation ?? 0, anchor?.generation ?? 0), text, body, nowMs());
      return { state, result };
    });
  }

  /**
   * Initialise a fresh folder with the empty state (no-op when a state exists or is broken: a
   * deleted state is never re-created here), and remove temp files left by a writer killed
   * mid-write (the lock is held: no write is running).
   */
  initIfFresh(nowMs: number): Promise<void> {
    return this.withLock(async () => {
      for (const f of fs.readdirSync(this.dir)) if (/^\.(state\.json|state\.prev\.json|INITIALISED)\.tmp-/.test(f)) fs.rmSync(path.join(this.dir, f), { force: true });
      const { result } = await readVerified(this.dir, this.auth);
      if (!result.ok && result.fresh) await this.writeNext(newStoreId(), 0, undefined, emptyState(), nowMs);
    });
  }

  /**
   * Replace a state that is not trusted. The untrusted file is kept as state.json.broken-<time>
   * for forensics. `build` receives the base body: none ('empty'), the verified backup ('backup'),
   * or a version 1 file that passed its checksum ('adopt-unauthenticated'). The new state's
   * generation is above everything seen, so neither the broken file nor the backup can be put back.
   */
  repair(source: RepairSource, build: (base: StateBody | undefined, note: string) => StateBody, nowMs: () => number = Date.now): Promise<StoredState> {
    return this.withLock(async () => {
      const { result: cur, anchor } = await readVerified(this.dir, this.auth);
      // Never a way to wipe a good state (and its policies): only a broken one is repaired.
      if (cur.ok || cur.fresh) throw new ControlError('invalid', `nothing to repair: ${cur.ok ? `${this.file} verifies (generation ${cur.state.generation})` : 'the state folder is fresh'}`);
      let base: StateBody | undefined;
      let after = anchor?.generation ?? 0;
      let note = `replaced an untrusted state (${cur.reason}) with an empty state`;
      if (source === 'backup') {
        const b = await readBackup(this.dir, this.auth, anchor);
        if (!b.ok) throw new ControlError('invalid', `backup unusable: ${b.reason}`);
        base = b.state.body;
        after = Math.max(after, b.state.generation);
        note = `replaced an untrusted state (${cur.reason}) with the verified backup of generation ${b.state.generation}`;
      } else if (source === 'adopt-unauthenticated') {
        if (!cur.legacy) throw new ControlError('invalid', `--adopt-unauthenticated applies only to a version 1 state file that passes its checksum while the token holds no generation record; this state: ${cur.reason}`);
        base = cur.legacy;
        note = `adopted an unauthenticated version 1 state file`;
      }
      if (fs.existsSync(this.file)) {
        // A copy, not a rename: state.json is replaced atomically below and never goes missing
        // (a reader would see a deletion).
        const broken = `${this.file}.broken-${new Date(nowMs()).toISOString().replace(/[:.]/g, '-')}`;
        try {
          fs.copyFileSync(this.file, broken);
        } catch {
          // Unreadable (e.g. a folder in its place): it cannot be kept; remove it so the new file fits.
          fs.rmSync(this.file, { recursive: true, force: true });
        }
      }
      return this.writeNext(anchor?.storeId ?? newStoreId(), after, undefined, build(base, note), nowMs());
    });
  }
}

function newStoreId(): string {
  return crypto.randomBytes(16).toString('hex');
}
