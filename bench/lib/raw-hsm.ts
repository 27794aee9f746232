/**
 * The floor: AES-256-GCM encrypts of 32 bytes (with ~100 bytes of AAD) straight through our
 * PKCS#11 backend, in this process, on one core: no HTTP, no TLS, no SigV4.
 */
import crypto from 'node:crypto';
import type { HsmConfig } from '../../src/config/schema';
import { openPkcs11Backend } from '../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../src/log/logger';
import { buildGcmAad } from '../../src/xks/aad';

export async function rawEncryptRate(hsmConfig: HsmConfig, pin: string, label: string, durationMs: number): Promise<{ opsPerSecond: number; ops: number }> {
  const hsm = await openPkcs11Backend(hsmConfig, pin, createSilentLogger());
  try {
    const plaintext = crypto.randomBytes(32);
    const aad = buildGcmAad(crypto.randomBytes(100), undefined);
    for (let i = 0; i < 200; i++) await hsm.encrypt(label, plaintext, aad); // warm-up: handle cache, JIT
    let ops = 0;
    const start = performance.now();
    while (performance.now() - start < durationMs) {
      await hsm.encrypt(label, plaintext, aad);
      ops++;
    }
    const secs = (performance.now() - start) / 1000;
    return { opsPerSecond: Math.round(ops / secs), ops };
  } finally {
    await hsm.close();
  }
}
