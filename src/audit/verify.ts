/**
 * `xks-proxy audit verify`: checks audit files end to end and reports the first problem precisely.
 *
 * For every line, in file order (files ordered by the seq of their first record): the line is a
 * record, its hash matches its content, its seq is the next one, its prevHash is the hash of the
 * record before it, and every checkpoint's JWS verifies with the auditor's public key and vouches
 * for exactly the chain before it. The first failure is classified:
 *   modified     a record's content no longer matches its hash, or a record was rewritten and
 *                re-hashed (its successor, or the next signed checkpoint, disagrees)
 *   deleted      seq numbers are missing (and do not turn up later)
 *   inserted     a record that is not part of the chain (a repeated seq, or a second record
 *                claiming a place the genuine one holds)
 *   reordered    a record appears before one with a lower seq
 *   bad-signature  a checkpoint JWS that does not verify with the key (or names another key)
 * and the end of the chain:
 *   torn-tail       the last line is incomplete (the appliance crashed mid-write); all before it verified
 *   uncovered-tail  records after the last signed checkpoint: intact as far as the chain goes, but a
 *                   truncation there could not be detected
 * A torn line that a later start record acknowledges (crash, then restart) is a warning only.
 *
 * The end of the log: a log whose newest file was deleted, or that was cut right after a
 * checkpoint, still ends in a valid signature, so the files alone cannot show it. Given a witness
 * (the audit.witnessFile copy of every checkpoint line, or any shipped copy of the audit lines,
 * e.g. the stdout stream) or the last checkpoint seq seen elsewhere (--expect-seq, e.g. from the
 * xks_audit_last_checkpoint_seq metric), the log must reach that far:
 *   truncated       the log ends before a checkpoint the witness holds (or before --expect-seq)
 * and warns (kind `witness`) when the witness holds no checkpoint of the log's stream, or others'.
 * A witnessed checkpoint that the log holds with other content is `modified`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { GENESIS_PREV_HASH, recordHash } from './canonical';
import type { CheckpointPayload } from './audit-log';
import type { VerificationKey } from './signing';

export type ProblemKind = 'modified' | 'deleted' | 'inserted' | 'reordered' | 'bad-signature' | 'torn-tail' | 'uncovered-tail' | 'truncated' | 'witness' | 'unreadable';

export interface Problem {
  kind: ProblemKind;
  file?: string | undefined;
  /** 1-based line number in `file`. */
  line?: number | undefined;
  seq?: number | undefined;
  message: string;
}

export interface VerifyReport {
  /** 0 intact and fully covered; 1 tampering or corruption; 3 uncovered tail; 4 torn tail; 5 truncated (the log ends before what the witness shows was written). */
  exitCode: 0 | 1 | 3 | 4 | 5;
  problem?: Problem | undefined;
  warnings: Problem[];
  files: string[];
  records: number;
  checkpoints: number;
  firstSeq?: number | undefined;
  lastSeq?: number | undefined;
  lastCheckpoint?: { seq: number; time: string; reason: string; file: string; line: number } | undefined;
  stream?: string | undefined;
  /** The newest checkpoint of this stream that the witness holds (seq of the checkpoint record). */
  witnessed?: { seq: number; time: string; file: string; line: number } | undefined;
}

export interface VerifyOptions {
  /** Accept a log that starts mid-chain (older files archived elsewhere). */
  partial?: boolean;
  /** Files holding copies of checkpoint lines (audit.witnessFile, a shipped stdout stream); other lines are ignored. */
  witnessFiles?: readonly string[];
  /** The log must reach at least this seq (e.g. the last checkpoint seq seen in the metrics). */
  expectSeq?: number;
}

interface Witnessed {
  seq: number;
  hash: string;
  time: string;
  stream: string;
  file: string;
  line: number;
}

/** The signed payload of a checkpoint record, or why its JWS does not verify with the key. */
async function checkpointPayload(r: Record<string, unknown>, key: VerificationKey): Promise<CheckpointPayload | string> {
  try {
    const v = await key.verify(String(r.jws));
    if (v.kid !== undefined && v.kid !== key.kid) return `signed by key ${v.kid}, not by the given key ${key.kid}`;
    return v.payload as CheckpointPayload;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * The checkpoint records in the witness files, each checked as the log's own are (its hash, its
 * JWS with the auditor's key, the JWS vouching for the record before it). A checkpoint line that
 * fails is a forged or damaged witness: reported, never trusted.
 */
async function readWitness(files: readonly string[], key: VerificationKey): Promise<{ entries: Witnessed[] } | { problem: Problem }> {
  const entries: Witnessed[] = [];
  for (const file of files) {
    let lines: string[];
    try {
      lines = fs.readFileSync(file, 'utf8').split('\n');
    } catch (e) {
      return { problem: { kind: 'unreadable', file, message: `witness ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` } };
    }
    for (let i = 0; i < lines.length; i++) {
      const r = parse(lines[i]!);
      if (!r || r.type !== 'checkpoint') continue;
      const where = `witness ${path.basename(file)} line ${i + 1}`;
      const bad = (message: string) => ({ problem: { kind: 'bad-signature' as const, file: path.basename(file), line: i + 1, seq: r.seq as number, message: `${where}: ${message}` } });
      if (recordHash(r) !== r.hash) return bad('the checkpoint line does not match its hash');
      const payload = await checkpointPayload(r, key);
      if (typeof payload === 'string') return bad(`the checkpoint signature does not verify (${payload})`);
      if (payload.seq !== (r.seq as number) - 1 || payload.hash !== r.prevHash) return bad('the signature vouches for another record than the one before this checkpoint');
      entries.push({ seq: r.seq as number, hash: r.hash as string, time: String(r.time), stream: payload.stream, file: path.basename(file), line: i + 1 });
    }
  }
  return { entries };
}

interface Entry {
  file: string;
  line: number;
  offset: number;
  text: string;
  /** Last line of a file that did not end with a newline. */
  unterminated: boolean;
  rec?: Record<string, unknown> | undefined;
  hashOk: boolean;
}

function parse(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
    const r = v as Record<string, unknown>;
    return Number.isSafeInteger(r.seq) && typeof r.hash === 'string' && typeof r.prevHash === 'string' ? r : undefined;
  } catch {
    return undefined;
  }
}

/** Expand directories to their *.log files. */
export function expandInputs(inputs: readonly string[]): string[] {
  const out: string[] = [];
  for (const p of inputs) {
    if (fs.statSync(p).isDirectory()) {
      for (const n of fs.readdirSync(p).sort()) if (n.endsWith('.log') && fs.statSync(path.join(p, n)).isFile()) out.push(path.join(p, n));
    } else out.push(p);
  }
  return out;
}

function readEntries(file: string): Entry[] {
  const buf = fs.readFileSync(file);
  const entries: Entry[] = [];
  let start = 0;
  let line = 1;
  while (start < buf.length) {
    const nl = buf.indexOf(0x0a, start);
    const end = nl < 0 ? buf.length : nl;
    const text = buf.subarray(start, end).toString('utf8');
    const rec = parse(text);
    entries.push({ file, line, offset: start, text, unterminated: nl < 0, rec, hashOk: rec !== undefined && recordHash(rec) === rec.hash });
    start = end + 1;
    line++;
  }
  return entries;
}

export async function verifyAuditFiles(inputs: readonly string[], key: VerificationKey, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { exitCode: 0, warnings: [], files: [], records: 0, checkpoints: 0 };
  let files: { file: string; entries: Entry[] }[];
  try {
    files = expandInputs(inputs).map((file) => ({ file, entries: readEntries(file) }));
  } catch (e) {
    report.exitCode = 1;
    report.problem = { kind: 'unreadable', message: (e as Error).message };
    return report;
  }
  // Files in chain order: by the seq of their first record (a file whose first line is not a
  // record sorts by name among the others, and is then reported where it stands).
  files = files.filter((f) => f.entries.length > 0);
  const firstSeq = (f: { entries: Entry[] }) => (f.entries[0]!.rec?.seq as number | undefined) ?? Number.MAX_SAFE_INTEGER;
  files.sort((a, b) => firstSeq(a) - firstSeq(b) || a.file.localeCompare(b.file));
  report.files = files.map((f) => f.file);
  const all: Entry[] = files.flatMap((f) => f.entries);
  const name = (e: Entry) => path.basename(e.file);
  const at = (e: Entry) => `${name(e)} line ${e.line}`;
  const fail = (kind: ProblemKind, e: Entry | undefined, message: string): VerifyReport => {
    report.exitCode = 1;
    report.problem = { kind, file: e && name(e), line: e?.line, seq: e?.rec?.seq as number | undefined, message };
    return report;
  };

  const bySeq = new Map<number, number[]>();
  all.forEach((e, i) => {
    if (e.rec && e.hashOk) {
      const s = e.rec.seq as number;
      const list = bySeq.get(s) ?? [];
      list.push(i);
      bySeq.set(s, list);
    }
  });

  let expected: number | undefined;
  let lastHash = '';
  let last: Entry | undefined;
  let stream: string | undefined;
  let lastCheckpointIdx = -1;
  /** seq -> hash of every checkpoint record of the chain (what a witness is compared with). */
  const checkpointHashes = new Map<number, string>();

  for (let i = 0; i < all.length; i++) {
    const e = all[i]!;
    const isLastLine = i === all.length - 1;
    if (!e.rec) {
      if (e.unterminated && isLastLine) {
        report.exitCode = 4;
        report.problem = { kind: 'torn-tail', file: name(e), line: e.line, message: `${at(e)} is incomplete (${Buffer.byteLength(e.text)} bytes without an end of line): the appliance stopped in the middle of a write. Every record before it verified.` };
        break;
      }
      const next = all[i + 1]?.rec;
      const ack = next?.type === 'start' ? (next.recoveredTornLine as { file?: string; offset?: number; bytes?: number } | undefined) : undefined;
      if (ack && ack.file === name(e) && ack.offset === e.offset && ack.bytes === Buffer.byteLength(e.text)) {
        report.warnings.push({ kind: 'torn-tail', file: name(e), line: e.line, message: `${at(e)} is a line torn by a crash, acknowledged by the start record that follows` });
        continue;
      }
      return fail('modified', e, `${at(e)} is not an audit record (not JSON, or seq/prevHash/hash missing)`);
    }
    const r = e.rec;
    const seq = r.seq as number;
    if (!e.hashOk) return fail('modified', e, `${at(e)} (seq ${seq}): the record's content does not match its hash`);

    if (expected === undefined) {
      // The first record of the chain.
      if (seq === 0) {
        if (r.prevHash !== GENESIS_PREV_HASH || r.type !== 'start') return fail('modified', e, `${at(e)}: seq 0 must be a start record chained to the genesis hash`);
      } else if (!opts.partial) {
        return fail('deleted', e, `${at(e)}: the chain starts at seq ${seq}; records 0..${seq - 1} are missing (give the older files, or --partial to verify from here)`);
      }
      if (typeof r.stream !== 'string') return fail('modified', e, `${at(e)}: the first record does not name its stream`);
      stream = r.stream;
      report.firstSeq = seq;
    } else if (seq !== expected || r.prevHash !== lastHash) {
      if (seq > expected) {
        const laterIdx = bySeq.get(expected)?.find((j) => j > i);
        if (laterIdx !== undefined) return fail('reordered', e, `${at(e)} holds seq ${seq} where seq ${expected} was due; seq ${expected} comes later, at ${at(all[laterIdx]!)}`);
        const gap = seq - 1 === expected ? `seq ${expected} is` : `seq ${expected}..${seq - 1} are`;
        return fail('deleted', e, `${gap} missing before ${at(e)}${e.line === 1 ? ' (a whole file may be missing)' : ''}`);
      }
      if (seq < expected) {
        // A second record with a seq already seen: which of the two is the intruder? The genuine
        // one is the one its successor chains to.
        const firstIdx = bySeq.get(seq)?.find((j) => j < i);
        const successor = bySeq.get(seq + 1)?.map((j) => all[j]!.rec!);
        if (firstIdx !== undefined && successor?.some((s) => s.prevHash === r.hash) && !successor.some((s) => s.prevHash === all[firstIdx]!.rec!.hash)) {
          return fail('inserted', all[firstIdx], `${at(all[firstIdx]!)} (seq ${seq}) is not part of the chain: the record with seq ${seq + 1} chains to the one at ${at(e)}`);
        }
        return fail(firstIdx !== undefined ? 'inserted' : 'reordered', e, `${at(e)} repeats seq ${seq} (seq ${expected} was due)${firstIdx !== undefined ? `; seq ${seq} is already at ${at(all[firstIdx]!)}` : ''}`);
      }
      // Right seq, wrong link: either this record is an intruder claiming the genuine one's place,
      // or the record before it was rewritten and re-hashed.
      const genuineLater = bySeq.get(seq)?.find((j) => j > i && all[j]!.rec!.prevHash === lastHash);
      if (genuineLater !== undefined) return fail('inserted', e, `${at(e)} (seq ${seq}) is not part of the chain; the genuine seq ${seq} is at ${at(all[genuineLater]!)}`);
      return fail('modified', last, `${at(last!)} (seq ${expected - 1}) was altered: the next record (${at(e)}) chains to a different hash`);
    }
    if ((r.type === 'start' || r.type === 'rotate') && r.stream !== stream) return fail('inserted', e, `${at(e)} belongs to another audit stream (${String(r.stream)})`);

    if (r.type === 'checkpoint') {
      const payload = await checkpointPayload(r, key);
      if (typeof payload === 'string') return fail('bad-signature', e, `${at(e)} (seq ${seq}): the checkpoint signature does not verify (${payload})`);
      if (payload.stream !== stream) return fail('inserted', e, `${at(e)}: checkpoint of another audit stream`);
      if (payload.seq !== seq - 1 || payload.hash !== r.prevHash) {
        const from = lastCheckpointIdx >= 0 ? (all[lastCheckpointIdx]!.rec!.seq as number) + 1 : report.firstSeq!;
        return fail('modified', e, `records seq ${from}..${seq - 1} were rewritten and re-hashed: the signed checkpoint at ${at(e)} vouches for seq ${payload.seq} with hash ${String(payload.hash).slice(0, 16)}..., the chain has ${String(r.prevHash).slice(0, 16)}...`);
      }
      report.checkpoints++;
      checkpointHashes.set(seq, r.hash as string);
      lastCheckpointIdx = i;
      report.lastCheckpoint = { seq, time: String(r.time), reason: String(r.reason), file: name(e), line: e.line };
    }
    report.records++;
    report.lastSeq = seq;
    expected = seq + 1;
    lastHash = r.hash as string;
    last = e;
  }

  report.stream = stream;
  if (report.exitCode === 0 && report.records === 0) return fail('unreadable', undefined, 'no audit records in the given files');
  const lastSeq = report.lastSeq;
  const coveredTo = report.lastCheckpoint?.seq;
  if (lastSeq !== undefined && coveredTo !== lastSeq) {
    const n = coveredTo === undefined ? report.records : lastSeq - coveredTo;
    const w: Problem = {
      kind: 'uncovered-tail',
      seq: coveredTo === undefined ? report.firstSeq : coveredTo + 1,
      message: coveredTo === undefined
        ? `no signed checkpoint: none of the ${n} records is covered by a signature`
        : `${n} record(s) after the last checkpoint (seq ${coveredTo}, ${report.lastCheckpoint!.file} line ${report.lastCheckpoint!.line}) are not covered by a signature: a truncation after it could not be detected`,
    };
    if (report.exitCode === 0) {
      report.exitCode = 3;
      report.problem = w;
    } else report.warnings.push(w);
  }
  if (report.exitCode !== 1 && (opts.witnessFiles?.length || opts.expectSeq !== undefined)) await checkEnd(report, checkpointHashes, key, opts);
  return report;
}

/**
 * Hold the end of the chain against the witness and --expect-seq. A truncation outranks an
 * uncovered or torn tail (exit 5 over 3 and 4): records that were written are gone. The problem
 * the chain walk found, if any, is kept as a warning.
 */
async function checkEnd(report: VerifyReport, checkpointHashes: Map<number, string>, key: VerificationKey, opts: VerifyOptions): Promise<void> {
  const truncated = (message: string, seq: number) => {
    if (report.problem) report.warnings.push(report.problem);
    report.exitCode = 5;
    report.problem = { kind: 'truncated', seq, message };
  };
  const lastSeq = report.lastSeq ?? -1;
  if (opts.witnessFiles?.length) {
    const w = await readWitness(opts.witnessFiles, key);
    if ('problem' in w) {
      if (report.problem) report.warnings.push(report.problem);
      report.exitCode = 1;
      report.problem = w.problem;
      return;
    }
    const mine = w.entries.filter((e) => e.stream === report.stream);
    const others = new Set(w.entries.filter((e) => e.stream !== report.stream).map((e) => e.stream));
    if (others.size) report.warnings.push({ kind: 'witness', message: `the witness also holds checkpoints of ${others.size} other audit stream(s) (${[...others].join(', ')}): other workers, or an earlier log that is not among the given files` });
    if (mine.length === 0) report.warnings.push({ kind: 'witness', message: `the witness holds no checkpoint of this stream (${report.stream}): the end of the log could not be checked against it` });
    for (const e of mine) {
      if (e.seq < (report.firstSeq ?? 0)) continue; // archived part of a --partial log
      const have = checkpointHashes.get(e.seq);
      if (e.seq > lastSeq) continue; // judged below, on the newest one
      if (have !== e.hash) {
        if (report.problem) report.warnings.push(report.problem);
        report.exitCode = 1;
        report.problem = { kind: 'modified', seq: e.seq, message: `the witness (${e.file} line ${e.line}) holds a signed checkpoint at seq ${e.seq} that the log does not have at that place: the log was rewritten` };
        return;
      }
    }
    const newest = mine.reduce<Witnessed | undefined>((a, e) => (a === undefined || e.seq > a.seq ? e : a), undefined);
    if (newest) report.witnessed = { seq: newest.seq, time: newest.time, file: newest.file, line: newest.line };
    if (newest && newest.seq > lastSeq) {
      return truncated(`the log ends at seq ${lastSeq}, but the witness (${newest.file} line ${newest.line}) holds a signed checkpoint at seq ${newest.seq} (${newest.time}): records ${lastSeq + 1}..${newest.seq} at least were removed (the newest file deleted, or a file cut short)`, lastSeq + 1);
    }
  }
  if (opts.expectSeq !== undefined && opts.expectSeq > lastSeq) {
    truncated(`the log ends at seq ${lastSeq}, but seq ${opts.expectSeq} was expected (--expect-seq): records ${lastSeq + 1}..${opts.expectSeq} at least were removed`, lastSeq + 1);
  }
}

export function formatReport(r: VerifyReport): string {
  const lines: string[] = [];
  const cp = r.lastCheckpoint ? `last checkpoint seq ${r.lastCheckpoint.seq} at ${r.lastCheckpoint.time} (${r.lastCheckpoint.reason})` : 'no checkpoint';
  lines.push(`${r.files.length} file(s), ${r.records} record(s) verified (seq ${r.firstSeq ?? '-'}..${r.lastSeq ?? '-'}), ${r.checkpoints} checkpoint(s), ${cp}`);
  for (const w of r.warnings) lines.push(`warning: ${w.kind}: ${w.message}`);
  if (r.exitCode === 0) lines.push('OK: the chain is intact and every record is covered by a signed checkpoint');
  else if (r.problem) lines.push(`${r.exitCode === 1 || r.exitCode === 5 ? 'FAIL' : 'INCOMPLETE'}: ${r.problem.kind}: ${r.problem.message}`);
  return lines.join('\n');
}
