/** Audit test helpers: a temporary folder with a signing key pair and a writer on it. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AuditLog, type AuditLogOptions } from '../../../src/audit/audit-log';
import { generateSigningKeyPair, loadSigningKey, loadVerificationKey, type VerificationKey } from '../../../src/audit/signing';

export interface AuditFixture {
  dir: string;
  file: string;
  privateFile: string;
  publicFile: string;
  open(extra?: Partial<AuditLogOptions>): AuditLog;
  key(): Promise<VerificationKey>;
  lines(file?: string): string[];
  writeLines(lines: string[], file?: string): void;
  cleanup(): void;
}

export async function auditFixture(): Promise<AuditFixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-audit-'));
  const privateFile = path.join(dir, 'keys', 'audit-signing.jwk');
  const publicFile = path.join(dir, 'keys', 'audit-signing.pub.jwk');
  await generateSigningKeyPair(privateFile, publicFile);
  const file = path.join(dir, 'logs', 'audit.log');
  return {
    dir,
    file,
    privateFile,
    publicFile,
    open: (extra = {}) => new AuditLog({ file, signingKey: loadSigningKey(privateFile), checkpointIntervalSeconds: 3600, maxFileBytes: 1024 * 1024 * 1024, ...extra }),
    key: () => loadVerificationKey(publicFile),
    lines: (f = file) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.length > 0),
    writeLines: (lines, f = file) => fs.writeFileSync(f, lines.map((l) => l + '\n').join('')),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

let n = 0;
/** A request record as the pipeline writes it. */
export function requestRecord(over: Record<string, unknown> = {}): any {
  n++;
  return {
    time: new Date().toISOString(),
    api: 'Encrypt',
    keyStore: 'tenant-a',
    externalKeyId: 'k1',
    kmsRequestId: `req-${n}`,
    kmsOperation: 'Encrypt',
    awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
    kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    outcome: 'ok',
    status: 200,
    latencyMs: 1.5,
    hsmMs: 0.7,
    ...over,
  };
}
