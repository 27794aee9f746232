/**
 * The durable control state: <stateDir>/state.json.
 *
 * Format (version 1):
 *   { "format": "xks-proxy-control-state", "version": 1, "generation": N, "writtenAt": ISO,
 *     "body": { blocks, approvals, policies, history }, "sha256": hex }
 * sha256 is the SHA-256 of the canonical JSON (keys sorted, no spaces) of every other field, so a
 * truncated, bit-flipped or hand-edited file is detected. It detects corruption, not an attacker
 * who can write the file (the audit log is the tamper-evident record).
 *
 * Writes survive crash and kill -9 at any point: temp file (O_EXCL, 0600) -> write -> fsync ->
 * rename over state.json -> fsync of the folder. A reader sees the old or the new file, never a
 * mix. The previous good file is kept as state.prev.json (same procedure) for `killswitch repair
 * --from-backup`. After the first successful write an INITIALISED marker is written, so that a
 * state.json that disappears later is an error (fail closed), not a fresh start.
 *
 * Writers in several processes (the proxy, the emergency CLI) serialise on state.lock (O_EXCL,
 * holding pid); a lock whose holder is dead or that is older than STALE_LOCK_MS is broken.
 * Every change is read-modify-write under the lock, so no writer overwrites another's change.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ControlError, StateBody, emptyState } from './state-model';
import { fsyncDir } from '../util/durable-fs';
import { processAlive } from '../util/process-lock';

export const STATE_FORMAT = 'xks-proxy-control-state';
export const STATE_VERSION = 1;
export const STATE_FILE = 'state.json';
export const BACKUP_FILE = 'state.prev.json';
export const LOCK_FILE = 'state.lock';
export const MARKER_FILE = 'INITIALISED';
const STALE_LOCK_MS = 30_000;

export interface StoredState {
  generation: number;
  writtenAt: string;
  body: StateBody;
  sha256: string;
}

export type ReadResult = { ok: true; state: StoredState } | { ok: false; fresh: true } | { ok: false; fresh: false; reason: string };

/** JSON with object keys sorted at every level: the checksum input. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return '[' + v.map(canonicalJson).join(',') + ']';
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return '{' + Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => JSON.stringify(k) + ':' + canonicalJson(o[k])).join(',') + '}';
  }
  return JSON.stringify(v);
}

function checksum(generation: number, writtenAt: string, body: unknown): string {
  return crypto.createHash('sha256').update(canonicalJson({ format: STATE_FORMAT, version: STATE_VERSION, generation, writtenAt, body })).digest('hex');
}

export function serializeState(generation: number, writtenAt: string, body: StateBody): string {
  const sha256 = checksum(generation, writtenAt, body);
  return JSON.stringify({ format: STATE_FORMAT, version: STATE_VERSION, generation, writtenAt, body, sha256 }, null, 2) + '\n';
}

/** Verify a state file's text; returns the state or the reason it cannot be trusted. */
export function parseStateText(text: string): { ok: true; state: StoredState } | { ok: false; reason: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, reason: `not valid JSON (${text.length} bytes; truncated or corrupt)` };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: false, reason: 'not a JSON object' };
  const o = raw as Record<string, unknown>;
  if (o.format !== STATE_FORMAT) return { ok: false, reason: `unknown format ${JSON.stringify(o.format)}` };
  if (o.version !== STATE_VERSION) return { ok: false, reason: `unsupported version ${JSON.stringify(o.version)} (this proxy reads ${STATE_VERSION})` };
  if (typeof o.generation !== 'number' || !Number.isInteger(o.generation) || typeof o.writtenAt !== 'string' || typeof o.sha256 !== 'string') {
    return { ok: false, reason: 'generation, writtenAt or sha256 missing' };
  }
  if (checksum(o.generation, o.writtenAt, o.body) !== o.sha256) return { ok: false, reason: 'checksum mismatch (the file was corrupted or edited by hand)' };
  const body = StateBody.safeParse(o.body);
  if (!body.success) {
    const i = body.error.issues[0]!;
    return { ok: false, reason: `content invalid at ${i.path.join('.') || '(body)'}: ${i.message}` };
  }
  return { ok: true, state: { generation: o.generation, writtenAt: o.writtenAt, body: body.data, sha256: o.sha256 } };
}

export function readState(dir: string): ReadResult {
  const file = path.join(dir, STATE_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ENOENT') {
      if (!fs.existsSync(path.join(dir, MARKER_FILE))) return { ok: false, fresh: true };
      return { ok: false, fresh: false, reason: `${file} is missing, but ${dir} was initialised (${MARKER_FILE} exists)` };
    }
    return { ok: false, fresh: false, reason: `cannot read ${file} (${code})` };
  }
  const r = parseStateText(text);
  return r.ok ? r : { ok: false, fresh: false, reason: `${file}: ${r.reason}` };
}

export function readBackup(dir: string): { ok: true; state: StoredState } | { ok: false; reason: string } {
  const file = path.join(dir, BACKUP_FILE);
  try {
    return parseStateText(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return { ok: false, reason: `cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})` };
  }
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

export class StateStore {
  readonly file: string;
  constructor(
    readonly dir: string,
    private readonly lockTimeoutMs = 5000,
  ) {
    this.file = path.join(dir, STATE_FILE);
  }

  /** Creates the folder (0700) if needed. */
  ensureDir(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  read(): ReadResult {
    return readState(this.dir);
  }

  private async withLock<T>(f: () => T): Promise<T> {
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
      return f();
    } finally {
      fs.rmSync(lockFile, { force: true });
    }
  }

  /** Write `body` as the next generation; keeps the previous text as the backup. Caller holds the lock. */
  private writeNext(prev: StoredState | undefined, prevText: string | undefined, body: StateBody, nowMs: number): StoredState {
    const generation = (prev?.generation ?? 0) + 1;
    const writtenAt = new Date(nowMs).toISOString();
    const text = serializeState(generation, writtenAt, body);
    // The folder fsync after state.json's rename also makes the backup's rename durable.
    if (prevText !== undefined) atomicWrite(this.dir, BACKUP_FILE, prevText, false);
    atomicWrite(this.dir, STATE_FILE, text);
    if (!fs.existsSync(path.join(this.dir, MARKER_FILE))) atomicWrite(this.dir, MARKER_FILE, `initialised ${writtenAt}\n`);
    return { generation, writtenAt, body, sha256: checksum(generation, writtenAt, body) };
  }

  /**
   * Read-modify-write under the lock. A fresh folder starts from the empty state; an unreadable or
   * corrupt file refuses every change (ControlError fail-closed): only repair() may replace it.
   */
  mutate<R>(f: (body: StateBody) => { body: StateBody; result: R }, nowMs: () => number = Date.now): Promise<{ state: StoredState; result: R }> {
    return this.withLock(() => {
      const cur = this.read();
      if (!cur.ok && !cur.fresh) throw new ControlError('fail-closed', `state unreadable, changes refused until it is repaired: ${cur.reason}`);
      const prev = cur.ok ? cur.state : undefined;
      const prevText = cur.ok ? fs.readFileSync(this.file, 'utf8') : undefined;
      const { body, result } = f(prev?.body ?? emptyState());
      return { state: this.writeNext(prev, prevText, body, nowMs()), result };
    });
  }

  /**
   * Initialise a fresh folder with the empty state (no-op when a state exists or is broken), and
   * remove temp files left by a writer killed mid-write (the lock is held: no write is running).
   */
  initIfFresh(nowMs: number): Promise<void> {
    return this.withLock(() => {
      for (const f of fs.readdirSync(this.dir)) if (/^\.(state\.json|state\.prev\.json|INITIALISED)\.tmp-/.test(f)) fs.rmSync(path.join(this.dir, f), { force: true });
      const cur = this.read();
      if (!cur.ok && cur.fresh) this.writeNext(undefined, undefined, emptyState(), nowMs);
    });
  }

  /**
   * Replace a broken state. The broken file is kept as state.json.broken-<time> for forensics.
   * `build` receives the verified backup's body (when asked for and valid) or undefined.
   */
  repair(useBackup: boolean, build: (base: StateBody | undefined, note: string) => StateBody, nowMs: () => number = Date.now): Promise<StoredState> {
    return this.withLock(() => {
      const cur = this.read();
      // Never a way to wipe a good state (and its policies): only a broken one is repaired.
      if (cur.ok || cur.fresh) throw new ControlError('invalid', `nothing to repair: ${cur.ok ? `${this.file} is readable (generation ${cur.state.generation})` : 'the state folder is fresh'}`);
      let base: StateBody | undefined;
      let generation = 0;
      let note = `replaced unreadable state (${cur.reason}) with an empty state`;
      if (useBackup) {
        const b = readBackup(this.dir);
        if (!b.ok) throw new ControlError('invalid', `backup unusable: ${b.reason}`);
        base = b.state.body;
        generation = b.state.generation + 1;
        note = `replaced unreadable state (${cur.reason}) with the backup of generation ${b.state.generation}`;
      }
      if (fs.existsSync(this.file)) fs.renameSync(this.file, `${this.file}.broken-${new Date(nowMs()).toISOString().replace(/[:.]/g, '-')}`);
      const body = build(base, note);
      return this.writeNext({ generation, writtenAt: '', body: emptyState(), sha256: '' }, undefined, body, nowMs());
    });
  }
}
