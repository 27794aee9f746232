/**
 * The tamper-evident audit log (spec "Logging": log request metadata, outcome and latency, never
 * plaintext, and protect the integrity of the logs).
 *
 * One JSON line per record: {seq, id, time, type, prevHash, ...members, hash}. `hash` is the hex
 * SHA-256 of the record's canonical JSON without `hash` (canonical.ts); `prevHash` is the hash of
 * the record before it, so that every record commits to all earlier ones. The line is that
 * canonical JSON (members in sorted order) with `hash` appended last. Types:
 *   start       the writer opened the log (process start); the first ever has seq 0 and names
 *               the stream; after a crash it also acknowledges the torn line it found
 *   xks         one XKS request            admin   one admin action
 *   checkpoint  `jws`: a compact JWS, by the audit signing key, over
 *               {stream, seq, hash, time, reason} of the record just before it
 *   rotate      first record of a new file after rotation; names the previous file
 * Checkpoints are written every audit.checkpointIntervalSeconds, at rotation and at close.
 *
 * Writes: records are chained synchronously as they come (so chain order is call order), collected
 * during one event-loop turn and written with one fs.writeSync of whole lines at the next
 * setImmediate (or at once past 64 KiB): group commit. commit() resolves once the write of its
 * batch returned (and, with durability "fsync", once fdatasync returned), so that the pipeline
 * answers a request only after its record is in the file: a killed process then loses no record of
 * an answered request (durability "write": the page cache survives the process; "fsync": it
 * survives a power loss too). A crash can cut the last line short; `audit verify` reports such a
 * torn tail, and the next start acknowledges it in its start record and continues the chain.
 *
 * Witness: a checkpoint only vouches for what precedes it, so deleting the newest file or cutting
 * a file right after a checkpoint leaves a log that ends in a valid signature. Each checkpoint line
 * is therefore also appended (after the log itself is synced) to audit.witnessFile, which the
 * auditor keeps or ships elsewhere; `audit verify --witness` holds the log's end against it.
 *
 * Rotation: once the file passes audit.maxFileBytes, a checkpoint closes it, it is renamed to
 * <name>-<yyyymmddThhmmssZ>-<first seq>.log, and the new file begins with a "rotate" record
 * chained to the checkpoint, so the chain runs on across files.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import winston from 'winston';
import type { AppLogger } from '../log/logger';
import type { RequestRecord } from '../log/request-log';
import { VERSION } from '../version';
import type { AuditConfig } from './config';
import { GENESIS_PREV_HASH, recordHash, sealRecord } from './canonical';
import { adminFields, xksFields, type AdminAction, type AuditSink } from './records';
import { loadSigningKey, signCompact, type SigningKey } from './signing';
import { acquireProcessLock, type ProcessLock } from '../util/process-lock';

export type AuditRecordType = 'start' | 'xks' | 'admin' | 'checkpoint' | 'rotate';

export interface CheckpointPayload {
  stream: string;
  /** seq and hash of the last record the checkpoint covers (the one just before it). */
  seq: number;
  hash: string;
  time: string;
  reason: 'interval' | 'rotate' | 'shutdown';
}

export interface AuditLogOptions {
  file: string;
  signingKey: SigningKey;
  checkpointIntervalSeconds: number;
  maxFileBytes: number;
  /** Also write every line here (stdout in production), through winston. */
  stdout?: Writable | undefined;
  /** "write": commit() resolves after write(); "fsync": after fdatasync too. Default "write". */
  durability?: 'write' | 'fsync' | undefined;
  /** Every checkpoint line is also appended (and fsynced) here; see `audit verify --witness`. */
  witnessFile?: string | undefined;
  log?: AppLogger | undefined;
  now?: () => number;
}

export interface AuditStats {
  records: number;
  writeErrors: number;
  lastCheckpointMs: number | undefined;
  /** seq of the last checkpoint record (what `audit verify --expect-seq` takes). */
  lastCheckpointSeq: number | undefined;
}

interface Waiter {
  resolve(): void;
  reject(e: Error): void;
}

const FLUSH_AT_BYTES = 64 * 1024;
/** Enough to hold the last complete records of any file (a record is at most ~25 KiB). */
const TAIL_BYTES = 256 * 1024;

export class AuditLogError extends Error {}

interface Recovered {
  seq: number;
  hash: string;
  stream: string;
  firstSeq: number;
  torn?: { file: string; offset: number; bytes: number; sha256: string } | undefined;
}

export class AuditLog implements AuditSink {
  private fd: number;
  private seq: number;
  private lastHash: string;
  private stream: string;
  private firstSeqOfFile: number;
  private fileBytes: number;
  private pending: string[] = [];
  /** commit() callers whose records are in `pending`. */
  private waiters: Waiter[] = [];
  private witnessFd: number | undefined;
  private pendingBytes = 0;
  private flushScheduled = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private rotating = false;
  private readonly stdoutLogger: winston.Logger | undefined;
  private readonly now: () => number;
  readonly stats: AuditStats = { records: 0, writeErrors: 0, lastCheckpointMs: undefined, lastCheckpointSeq: undefined };
  private readonly lock: ProcessLock;

  /** Opens (or continues) the log at opts.file and writes a start record. */
  constructor(private readonly opts: AuditLogOptions) {
    this.now = opts.now ?? Date.now;
    if (opts.stdout) {
      this.stdoutLogger = winston.createLogger({
        level: 'info',
        format: winston.format.printf((info) => String(info.message)),
        transports: [new winston.transports.Stream({ stream: opts.stdout })],
      });
    }
    fs.mkdirSync(path.dirname(opts.file), { recursive: true, mode: 0o750 });
    // One writer per file: a second proxy on the same config must not start a second chain in it.
    this.lock = acquireProcessLock(`${opts.file}.lock`, `the audit log ${opts.file}`);
    const rec = recoverChain(opts.file);
    this.fd = fs.openSync(opts.file, 'a', 0o640);
    if (opts.witnessFile) {
      fs.mkdirSync(path.dirname(opts.witnessFile), { recursive: true, mode: 0o750 });
      // Appends only: several writers (cluster workers, the primary) may share one witness file.
      this.witnessFd = fs.openSync(opts.witnessFile, 'a', 0o640);
    }
    this.fileBytes = fs.fstatSync(this.fd).size;
    if (rec) {
      this.seq = rec.seq + 1;
      this.lastHash = rec.hash;
      this.stream = rec.stream;
      this.firstSeqOfFile = this.fileBytes === 0 ? this.seq : rec.firstSeq;
    } else {
      this.seq = 0;
      this.lastHash = GENESIS_PREV_HASH;
      this.stream = crypto.randomUUID();
      this.firstSeqOfFile = 0;
    }
    this.append('start', {
      stream: this.stream,
      version: VERSION,
      pid: process.pid,
      kid: opts.signingKey.kid,
      checkpointIntervalSeconds: opts.checkpointIntervalSeconds,
      recoveredTornLine: rec?.torn,
    });
    this.flush();
    this.timer = setInterval(() => this.checkpoint('interval'), opts.checkpointIntervalSeconds * 1000);
    this.timer.unref();
  }

  get file(): string {
    return this.opts.file;
  }

  write(r: RequestRecord): void {
    // The record's time is when the request arrived.
    this.append('xks', xksFields(r), r.time);
  }

  /** Chain the record now; resolves once its batch is in the file (rejects if it could not be written). */
  commit(r: RequestRecord): Promise<void> {
    return new Promise((resolve, reject) => this.append('xks', xksFields(r), r.time, { resolve, reject }));
  }

  writeAdmin(a: AdminAction): void {
    this.append('admin', adminFields(a));
  }

  /** Sign the chain up to now. */
  checkpoint(reason: CheckpointPayload['reason'] = 'interval'): void {
    if (this.closed) return;
    const time = new Date(this.now()).toISOString();
    const payload: CheckpointPayload = { stream: this.stream, seq: this.seq - 1, hash: this.lastHash, time, reason };
    const cpSeq = this.seq;
    const line = this.append('checkpoint', { reason, jws: signCompact(this.opts.signingKey, payload) }, time);
    this.stats.lastCheckpointMs = this.now();
    this.stats.lastCheckpointSeq = cpSeq;
    // The witness must never be ahead of the log: it gets the checkpoint only once the log holds it
    // on disk, or `audit verify --witness` would report a truncation after a mere crash.
    if (this.writePending() && line !== undefined) this.witness(line);
    this.rotateIfFull();
  }

  private witness(line: string): void {
    if (this.witnessFd === undefined) return;
    try {
      fs.fdatasyncSync(this.fd);
      const buf = Buffer.from(line + '\n', 'utf8');
      let off = 0;
      while (off < buf.length) off += fs.writeSync(this.witnessFd, buf, off, buf.length - off);
      fs.fdatasyncSync(this.witnessFd);
    } catch (e) {
      this.stats.writeErrors++;
      this.opts.log?.error('audit witness write failed', { file: this.opts.witnessFile, code: (e as NodeJS.ErrnoException).code });
    }
  }

  private append(type: AuditRecordType, members: Record<string, unknown>, time?: string, waiter?: Waiter): string | undefined {
    if (this.closed) {
      this.opts.log?.error('audit record after close, dropped', { type });
      this.stats.writeErrors++;
      waiter?.reject(new AuditLogError('the audit log is closed'));
      return undefined;
    }
    const rec: Record<string, unknown> = { seq: this.seq, id: crypto.randomUUID(), time: time ?? new Date(this.now()).toISOString(), type, prevHash: this.lastHash, ...members };
    const { line, hash } = sealRecord(rec);
    this.seq++;
    this.lastHash = hash;
    this.stats.records++;
    this.pending.push(line + '\n');
    this.pendingBytes += line.length + 1;
    if (waiter) this.waiters.push(waiter);
    this.stdoutLogger?.info(line);
    if (this.pendingBytes >= FLUSH_AT_BYTES) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    return line;
  }

  /** Write everything pending with one system call; rotate when the file is full. */
  flush(): void {
    this.flushScheduled = false;
    this.writePending();
    this.rotateIfFull();
  }

  /**
   * One write() of every pending line (plus fdatasync with durability "fsync"), then settle the
   * commit() callers of that batch. false when the lines could not be written.
   */
  private writePending(): boolean {
    if (this.pending.length === 0) return true;
    const data = Buffer.from(this.pending.join(''), 'utf8');
    const lines = this.pending.length;
    const waiters = this.waiters;
    this.pending = [];
    this.pendingBytes = 0;
    this.waiters = [];
    let written = 0;
    try {
      while (written < data.length) written += fs.writeSync(this.fd, data, written, data.length - written);
      if (this.opts.durability === 'fsync') fs.fdatasyncSync(this.fd);
    } catch (e) {
      // The lines are lost (or not known to be on disk): `audit verify` will show the gap in seq.
      // The requests waiting for them are answered InternalException (fail closed). Say it loudly.
      this.fileBytes += written;
      this.stats.writeErrors += lines;
      const code = (e as NodeJS.ErrnoException).code;
      this.opts.log?.error('audit write failed; records lost', { file: this.opts.file, records: lines, code });
      const err = new AuditLogError(`audit write failed (${code ?? 'error'})`);
      for (const w of waiters) w.reject(err);
      return false;
    }
    this.fileBytes += data.length;
    for (const w of waiters) w.resolve();
    return true;
  }

  private rotateIfFull(): void {
    if (this.fileBytes >= this.opts.maxFileBytes && !this.rotating && !this.closed) this.rotate();
  }

  /** Close the full file with a checkpoint, rename it, and chain a new file to it. */
  rotate(): void {
    this.rotating = true;
    try {
      this.checkpoint('rotate');
      fs.fsyncSync(this.fd);
      fs.closeSync(this.fd);
      const rotated = rotatedName(this.opts.file, this.now(), this.firstSeqOfFile);
      fs.renameSync(this.opts.file, rotated);
      this.fd = fs.openSync(this.opts.file, 'a', 0o640);
      this.fileBytes = 0;
      this.firstSeqOfFile = this.seq;
      this.append('rotate', { stream: this.stream, previousFile: path.basename(rotated) });
      this.flush();
      this.opts.log?.info('audit log rotated', { file: rotated });
    } catch (e) {
      this.stats.writeErrors++;
      this.opts.log?.error('audit log rotation failed', { file: this.opts.file, error: (e as Error).message });
    } finally {
      this.rotating = false;
    }
  }

  /** Final checkpoint, then close. Idempotent. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.timer) clearInterval(this.timer);
    this.checkpoint('shutdown');
    this.closed = true;
    try {
      fs.fsyncSync(this.fd);
    } catch {
      // fsync is best effort (some file systems refuse it); the data is written.
    }
    fs.closeSync(this.fd);
    if (this.witnessFd !== undefined) fs.closeSync(this.witnessFd);
    this.witnessFd = undefined;
    this.lock.release();
    const logger = this.stdoutLogger;
    if (!logger) return Promise.resolve();
    return new Promise((resolve) => {
      logger.on('finish', () => resolve());
      logger.end();
    });
  }
}

/** Open the audit log the configuration asks for. */
export function openAuditLog(cfg: AuditConfig, log?: AppLogger, stdout?: Writable): AuditLog {
  if (!cfg.file || !cfg.signingKeyFile) throw new AuditLogError('audit.file and audit.signingKeyFile are required');
  return new AuditLog({
    file: cfg.file,
    signingKey: loadSigningKey(cfg.signingKeyFile),
    checkpointIntervalSeconds: cfg.checkpointIntervalSeconds,
    maxFileBytes: cfg.maxFileBytes,
    stdout: cfg.stdout ? (stdout ?? process.stdout) : undefined,
    durability: cfg.durability,
    witnessFile: cfg.witnessFile,
    log,
  });
}

export function rotatedName(active: string, nowMs: number, firstSeq: number): string {
  const ext = path.extname(active);
  const stem = active.slice(0, active.length - ext.length);
  const ts = new Date(nowMs).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  return `${stem}-${ts}-${String(firstSeq).padStart(12, '0')}${ext || '.log'}`;
}

/** Rotated siblings of the active file, oldest first. */
export function rotatedFiles(active: string): string[] {
  const dir = path.dirname(active);
  const ext = path.extname(active);
  const stem = path.basename(active, ext);
  const re = new RegExp(`^${stem.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d{8}T\\d{6}Z-\\d{12}${(ext || '.log').replace('.', '\\.')}$`);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((n) => re.test(n)).sort().map((n) => path.join(dir, n));
}

function parseRecord(line: string): Record<string, unknown> | undefined {
  try {
    const r = JSON.parse(line) as unknown;
    if (typeof r !== 'object' || r === null || Array.isArray(r)) return undefined;
    const rec = r as Record<string, unknown>;
    return typeof rec.seq === 'number' && typeof rec.hash === 'string' && recordHash(rec) === rec.hash ? rec : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Where the chain stands in an existing log: the last complete record of the active file (or of
 * the newest rotated file if the active one is missing or empty, e.g. after a crash during
 * rotation). A torn final line (crash mid-write) is terminated with a newline so that it stays a
 * line of its own, and reported for the start record to acknowledge. A last complete record that
 * does not verify is refused: continuing would bury the evidence.
 */
function recoverChain(active: string): Recovered | undefined {
  const candidates = [active, ...rotatedFiles(active).reverse()];
  for (const file of candidates) {
    let size: number;
    try {
      size = fs.statSync(file).size;
    } catch {
      continue;
    }
    if (size === 0) continue;
    const fd = fs.openSync(file, 'r+');
    try {
      const start = Math.max(0, size - TAIL_BYTES);
      const tail = Buffer.alloc(size - start);
      fs.readSync(fd, tail, 0, tail.length, start);
      const head = Buffer.alloc(Math.min(size, TAIL_BYTES));
      fs.readSync(fd, head, 0, head.length, 0);
      const firstLine = head.toString('utf8').split('\n')[0] ?? '';
      const first = parseRecord(firstLine);
      const lastNl = tail.lastIndexOf(0x0a);
      let torn: Recovered['torn'];
      let body = tail;
      if (lastNl !== tail.length - 1) {
        const frag = tail.subarray(lastNl + 1);
        const whole = parseRecord(frag.toString('utf8'));
        fs.writeSync(fd, '\n', size);
        if (whole) {
          // Only the newline was lost: the record is complete.
          body = Buffer.concat([tail, Buffer.from('\n')]);
        } else {
          torn = { file: path.basename(file), offset: start + lastNl + 1, bytes: frag.length, sha256: crypto.createHash('sha256').update(frag).digest('hex') };
          body = tail.subarray(0, lastNl + 1);
        }
      }
      const lines = body.toString('utf8').split('\n').filter((l) => l.length > 0);
      const lastLine = lines[lines.length - 1];
      if (lastLine === undefined) {
        if (torn) throw new AuditLogError(`audit log ${file}: no complete record before the torn line; move the file aside to start a new chain`);
        continue;
      }
      const last = parseRecord(lastLine);
      if (!last) throw new AuditLogError(`audit log ${file}: the last record does not verify; run "xks-proxy audit verify" and move the file aside before starting`);
      const stream = typeof first?.stream === 'string' ? first.stream : undefined;
      if (stream === undefined) throw new AuditLogError(`audit log ${file}: the first record does not name the stream; run "xks-proxy audit verify"`);
      return { seq: last.seq as number, hash: last.hash as string, stream, firstSeq: first!.seq as number, torn };
    } finally {
      fs.closeSync(fd);
    }
  }
  return undefined;
}
