/**
 * The per-request log (spec "Logging"): one JSON line per XKS request with the request metadata
 * (kmsRequestId above all, for CloudTrail correlation), the outcome and the processing time.
 *
 * Records are built from an allow-list of fields (RequestRecord), never by dumping a request:
 * no plaintext, ciphertext, AAD, PIN, secret, signature or Authorization header can reach it.
 */
import fs from 'node:fs';
import path from 'node:path';
import winston from 'winston';
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


export function createRequestLog(opts: { stdout: boolean; file?: string | undefined }): RequestLog {
  const transports: winston.transport[] = [];
  if (opts.stdout) transports.push(new winston.transports.Console());
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true, mode: 0o750 });
    transports.push(new winston.transports.File({ filename: opts.file }));
  }
  const logger = winston.createLogger({
    level: 'info',
    silent: transports.length === 0,
    format: winston.format.printf((info) => JSON.stringify(info.record)),
    transports: transports.length ? transports : [new winston.transports.Console({ silent: true })],
  });
  return {
    write(r: RequestRecord): void {
      // The same allow-listed, clipped fields as an audit record: one definition (audit/records.ts).
      const record = { time: r.time, ...xksFields(r) };
      logger.info('request', { record });
    },
    close: () =>
      new Promise((resolve) => {
        logger.on('finish', () => resolve());
        logger.end();
      }),
  };
}
