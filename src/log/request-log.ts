/**
 * The per-request log (spec "Logging"): one JSON line per XKS request with the request metadata
 * (kmsRequestId above all, for CloudTrail correlation), the outcome and the processing time.
 *
 * Records are built from an allow-list of fields (RequestRecord), never by dumping a request:
 * no plaintext, ciphertext, AAD, PIN, secret, signature or Authorization header can reach it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { xksFields } from '../audit/records';

export interface RequestRecord {
  time: string;
  api: string;
  keyStore?: string | undefined;
  externalKeyId?: string | undefined;
  kmsRequestId?: string | undefined;
  kmsOperation?: string | undefined;
  awsPrincipalArn?: string | undefined;
  kmsKeyArn?: string | undefined;
  kmsViaService?: string | undefined;
  awsSourceVpc?: string | undefined;
  awsSourceVpce?: string | undefined;
  accessKeyId?: string | undefined;
  outcome: 'ok' | 'error';
  errorName?: string | undefined;
  /** The allowlist statement that denied the request (spec "Authorization"). */
  policyStatement?: string | undefined;
  /** The allowlist statement that allowed it. */
  allowedBy?: string | undefined;
  /** Log-safe internal reason of an error (e.g. why SigV4 failed), in words. */
  reason?: string | undefined;
  /** The same as a stable code (XksError.reason, e.g. "sigv4.clock_skew"): what metrics and tools read. */
  reasonCode?: string | undefined;
  status: number;
  latencyMs: number;
  hsmMs?: number | undefined;
  /** 'aws-sample': a Decrypt that needed the AWS sample proxy's AAD layout (keyStores[].compatibility). */
  aadLayout?: 'aws-sample' | undefined;
}

export interface RequestLog {
  write(record: RequestRecord): void;
  close(): Promise<void>;
}


/**
 * The request log without an audit log configured: JSON lines to stdout and/or a file. Lines are
 * collected during one event-loop turn and appended with one write at the next setImmediate, in
 * request order (as the audit log does): a write system call per request cost ~5% of the request
 * path under load. A crash loses at most the lines of the current turn; close() writes the rest.
 */
export function createRequestLog(opts: { stdout: boolean; file?: string | undefined }): RequestLog {
  let fd: number | undefined;
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true, mode: 0o750 });
    fd = fs.openSync(opts.file, 'a', 0o640);
  }
  let pending: string[] = [];
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (pending.length === 0) return;
    const data = pending.join('');
    pending = [];
    if (fd !== undefined) {
      const buf = Buffer.from(data, 'utf8');
      let off = 0;
      while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off);
    }
    if (opts.stdout) process.stdout.write(data);
  };
  return {
    write(r: RequestRecord): void {
      // The same allow-listed, clipped fields as an audit record: one definition (audit/records.ts).
      pending.push(JSON.stringify({ time: r.time, ...xksFields(r) }) + '\n');
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    async close(): Promise<void> {
      flush();
      if (fd !== undefined) fs.closeSync(fd);
      fd = undefined;
    },
  };
}
