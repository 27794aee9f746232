/**
 * The per-request log (spec "Logging"): one JSON line per XKS request with the request metadata
 * (kmsRequestId above all, for CloudTrail correlation), the outcome and the processing time.
 *
 * Records are built from an allow-list of fields (RequestRecord), never by dumping a request:
 * no plaintext, ciphertext, AAD, PIN, secret, signature or Authorization header can reach it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { xksFields, type RequestRecord } from './request-record';

export type { RequestRecord } from './request-record';


export interface RequestLog {
  /** Record it; a lost write only shows in the log and the metrics. */
  write(record: RequestRecord): void;
  /**
   * Record it and resolve once the line has reached the file (a write() returned; lines of
   * concurrent requests share one write). Rejects when it could not be written: the pipeline then
   * answers InternalException rather than a request that left no trace (fail closed).
   */
  commit(record: RequestRecord): Promise<void>;
  close(): Promise<void>;
}


/**
 * The request log without an audit log configured: JSON lines to stdout and/or a file. Lines are
 * collected during one event-loop turn and appended with one write at the next setImmediate, in
 * request order (as the audit log does): a write system call per request cost ~5% of the request
 * path under load. commit() resolves after that write, so an answered request's line is in the file
 * even if the process is killed; close() writes the rest.
 */
export function createRequestLog(opts: { stdout: boolean; file?: string | undefined }): RequestLog {
  let fd: number | undefined;
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true, mode: 0o750 });
    fd = fs.openSync(opts.file, 'a', 0o640);
  }
  let pending: string[] = [];
  let waiters: { resolve(): void; reject(e: Error): void }[] = [];
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (pending.length === 0) return;
    const data = pending.join('');
    const settle = waiters;
    pending = [];
    waiters = [];
    try {
      if (fd !== undefined) {
        const buf = Buffer.from(data, 'utf8');
        let off = 0;
        while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off);
      }
    } catch (e) {
      const err = new Error(`request log write failed (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
      for (const w of settle) w.reject(err);
      return;
    }
    if (opts.stdout) process.stdout.write(data);
    for (const w of settle) w.resolve();
  };
  const add = (r: RequestRecord): void => {
    // The same allow-listed, clipped fields as an audit record: one definition (audit/records.ts).
    pending.push(JSON.stringify({ time: r.time, level: requestLevel(r), message: 'xks request', ...xksFields(r) }) + '\n');
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  return {
    write: add,
    commit(r: RequestRecord): Promise<void> {
      return new Promise((resolve, reject) => {
        waiters.push({ resolve, reject });
        add(r);
      });
    },
    async close(): Promise<void> {
      flush();
      if (fd !== undefined) fs.closeSync(fd);
      fd = undefined;
    },
  };
}

/**
 * A level like the application log's lines, so that one log pipeline filters both alike: info
 * for an answered request, warn for a refusal the caller caused (4xx, and 501 for a request beyond
 * the proxy's limits), error for the proxy's own failure (500, 503).
 */
export function requestLevel(r: Pick<RequestRecord, 'outcome' | 'status'>): 'info' | 'warn' | 'error' {
  return r.outcome === 'ok' ? 'info' : r.status >= 500 && r.status !== 501 ? 'error' : 'warn';
}
