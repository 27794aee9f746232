/**
 * What key versions add to Encrypt: the cost of KeyVersionManager.forEncrypt (cached versions,
 * the encryption counted) per call, in memory and with the ledger on disk for several
 * keyVersions.reserveBlock sizes, and what one HSM version search costs on SoftHSM2 (it runs once
 * per key per keyVersions.rescanIntervalMs, and when a Decrypt names a version not seen yet).
 * Fleet mode: the same with the count reserved in a real three-member etcd cluster on loopback
 * (one transaction per block), for two block sizes.
 *
 *   npm run build && node dist/bench/key-versions.js [--calls 200000]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createKey } from '../src/hsm/key-admin';
import { rotateKey } from '../src/hsm/key-version-admin';
import { openPkcs11Backend } from '../src/hsm/pkcs11-backend';
import { createAppLogger } from '../src/log/logger';
import { KeyVersionsConfig } from '../src/xks/key-versions-config';
import { KeyVersionManager } from '../src/xks/key-versions';
import { Etcd3 } from 'etcd3';
import { EtcdEncryptionCounter } from '../src/control/etcd-encryption-counter';
import { startEtcdCluster } from '../test/helpers/etcd-cluster';
import { createTestToken } from '../test/helpers/softhsm-token';

async function perCallUs(calls: number, f: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(1000, calls); i++) await f(); // warm-up
  const t = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) await f();
  return Math.round((Number(process.hrtime.bigint() - t) / 1e3 / calls) * 100) / 100;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { calls: { type: 'string', default: '200000' } } });
  const calls = Number(values.calls);
  const token = createTestToken();
  const log = createAppLogger('error');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-bench-kv-'));
  try {
    await createKey(token.hsmConfig, token.pin, { label: 'k', usage: 'encrypt-decrypt' });
    for (let i = 0; i < 3; i++) await rotateKey(token.hsmConfig, token.pin, 'k');
    const hsm = await openPkcs11Backend(token.hsmConfig, token.pin, log);
    const key = { externalKeyId: 'k', label: 'k', enabled: true };
    const lines: string[] = [];
    for (const [name, usageDir, reserveBlock] of [['in memory', undefined, 10_000], ['ledger, block 10000', path.join(dir, 'a'), 10_000], ['ledger, block 1000', path.join(dir, 'b'), 1_000], ['ledger, block 100', path.join(dir, 'c'), 100]] as const) {
      const m = new KeyVersionManager(hsm, KeyVersionsConfig.parse({ usageDir, reserveBlock, rescanIntervalMs: 3_600_000 }), log);
      lines.push(`forEncrypt (${name}): ${await perCallUs(calls, () => m.forEncrypt(key))} us per call`);
    }
    const etcd = await startEtcdCluster(3);
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      for (const reserveBlock of [10_000, 100]) {
        const m = new KeyVersionManager(hsm, KeyVersionsConfig.parse({ reserveBlock, rescanIntervalMs: 3_600_000 }), log);
        m.ledger.useShared(new EtcdEncryptionCounter(client, `/bench-${reserveBlock}/`, 2000, log));
        lines.push(`forEncrypt (fleet count in etcd, block ${reserveBlock}): ${await perCallUs(calls, () => m.forEncrypt(key))} us per call`);
      }
    } finally {
      client.close();
      await etcd.stop();
    }
    const search = await perCallUs(200, () => hsm.listKeyVersions('k'));
    lines.push(`HSM version search (3 versions, SoftHSM2): ${search} us`);
    await hsm.close();
    process.stdout.write(`${lines.join('\n')}\n(${calls} calls each, load average ${os.loadavg()[0]!.toFixed(1)})\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    token.cleanup();
  }
}

void main();
