/**
 * The cost of committing audit records before answering, per audit.durability: `concurrency`
 * callers each commit a request record and wait for it, back to back, for `seconds`; prints
 * commits per second and how many records each write() carried (group commit).
 *
 *   node dist/bench/audit-commit.js [--seconds 3] [--concurrency 32] [--dir /path/on/the/audit/disk]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { AuditLog } from '../src/audit/audit-log';
import { generateSigningKeyPair, loadSigningKey } from '../src/audit/signing';
import type { RequestRecord } from '../src/log/request-log';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '3' }, concurrency: { type: 'string', default: '32' }, dir: { type: 'string' } } });
  const dir = fs.mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'xks-audit-bench-'));
  const keyFile = path.join(dir, 'keys', 'audit.jwk');
  await generateSigningKeyPair(keyFile, path.join(dir, 'keys', 'audit.pub.jwk'));
  const record = (i: number): RequestRecord => ({ time: new Date().toISOString(), api: 'Encrypt', keyStore: 'demo', externalKeyId: 'k1', kmsRequestId: `req-${i}`, kmsOperation: 'Encrypt', awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/k1', outcome: 'ok', status: 200, latencyMs: 1.2, hsmMs: 0.4 });
  try {
    for (const durability of ['write', 'fsync'] as const) {
      const log = new AuditLog({ file: path.join(dir, durability, 'audit.log'), signingKey: loadSigningKey(keyFile), checkpointIntervalSeconds: 3600, maxFileBytes: 1024 ** 3, durability });
      let writes = 0;
      const real = fs.writeSync;
      (fs as { writeSync: typeof fs.writeSync }).writeSync = ((...a: Parameters<typeof fs.writeSync>) => {
        writes++;
        return (real as (...x: unknown[]) => number)(...a);
      }) as typeof fs.writeSync;
      let n = 0;
      const end = Date.now() + Number(values.seconds) * 1000;
      const worker = async () => {
        while (Date.now() < end) await log.commit(record(n++));
      };
      const t0 = process.hrtime.bigint();
      await Promise.all(Array.from({ length: Number(values.concurrency) }, worker));
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      (fs as { writeSync: typeof fs.writeSync }).writeSync = real;
      await log.close();
      process.stdout.write(`durability ${durability}: ${Math.round(n / s)} commits/s, ${(n / writes).toFixed(1)} records per write (${values.concurrency} concurrent callers, ${s.toFixed(1)} s)\n`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
