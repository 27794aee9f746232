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
  /** Log-safe internal reason of an error (e.g. why SigV4 failed). */
  reason?: string | undefined;
  status: number;
  latencyMs: number;
  hsmMs?: number | undefined;
}

export interface RequestLog {
  write(record: RequestRecord): void;
  close(): Promise<void>;
}


/**
 * The request log without an audit log configured: JSON lines to stdout and/or a file. A line is
 * appended to the file synchronously (one write of one line, in request order), so a record is on
 * disk when its response is sent and nothing is lost at a crash but the request in progress.
 */
export function createRequestLog(opts: { stdout: boolean; file?: string | undefined }): RequestLog {
  let fd: number | undefined;
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true, mode: 0o750 });
    fd = fs.openSync(opts.file, 'a', 0o640);
  }
  return {
    write(r: RequestRecord): void {
      // The same allow-listed, clipped fields as an audit record: one definition (audit/records.ts).
      const line = JSON.stringify({ time: r.time, ...xksFields(r) }) + '\n';
      if (fd !== undefined) fs.writeSync(fd, line);
      if (opts.stdout) process.stdout.write(line);
    },
    async close(): Promise<void> {
      if (fd !== undefined) fs.closeSync(fd);
      fd = undefined;
    },
  };
}
