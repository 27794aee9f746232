/**
 * Test only: puts an AES key of a KNOWN value into a SoftHSM2 test token (C_CreateObject), so that
 * a test can make ciphertexts independently with node:crypto and have the proxy decrypt them. The
 * product itself never imports key material: its keys are generated inside the HSM.
 */
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../../src/config/schema';
import { xksAesKeyTemplate } from '../../src/hsm/key-admin';
import { withTokenSession } from '../../src/hsm/pkcs11-token';

export async function importAesKey(cfg: HsmConfig, pin: string, label: string, value: Buffer): Promise<void> {
  await withTokenSession(cfg, pin, (p, session) => {
    p.C_CreateObject(session, [...xksAesKeyTemplate(label, { encrypt: true, decrypt: true }), { type: pkcs11js.CKA_VALUE, value }]);
  });
}
