/**
 * rotation.everyDays on the real SoftHSM2 backend, with the manager's clock moved by the test
 * (days cannot pass in a test; the HTTP layer is covered by rotation.test.ts).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createAppLogger } from '../../../src/log/logger';
import { KeyVersionsConfig } from '../../../src/xks/key-versions-config';
import { KeyVersionManager } from '../../../src/xks/key-versions';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

const DAY_MS = 86_400_000;

describe('key versions: rotation.everyDays', function () {
  let token: TestToken;
  let hsm: Pkcs11Backend;

  before(async function () {
    token = createTestToken();
    for (const label of ['daily', 'weekly']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createAppLogger('error'));
  });

  after(async function () {
    await hsm?.close();
    token?.cleanup();
  });

  it('a version older than everyDays is rotated on the next Encrypt, not before', async () => {
    let now = Date.now();
    const usageDir = path.join(token.dir, 'usage');
    const cfg = KeyVersionsConfig.parse({ usageDir, autoRotate: true, reserveBlock: 1, rotation: { everyDays: 1 } });
    const m = new KeyVersionManager(hsm, cfg, createAppLogger('error'), () => now);
    const key = { externalKeyId: 'daily', label: 'daily', enabled: true };
    expect((await m.forEncrypt(key)).version).to.equal(0); // version 0 is first counted now
    now += DAY_MS - 60_000;
    await m.forEncrypt(key);
    await m.rotationsSettled();
    expect(await hsm.listKeyVersions('daily')).to.have.length(0);
    now += 60_000;
    await m.forEncrypt(key);
    await m.rotationsSettled();
    expect((await hsm.listKeyVersions('daily')).map((v) => v.version)).to.deep.equal([1]);
    expect((await m.forEncrypt(key)).version).to.equal(1);
    expect(fs.existsSync(usageDir)).to.equal(true);
    await m.close();
  });

  it('a key\'s own rotation overrides the default; without autoRotate nothing is generated', async () => {
    let now = Date.now();
    const cfg = KeyVersionsConfig.parse({ autoRotate: false, reserveBlock: 1, rotation: { everyDays: 1 } });
    const m = new KeyVersionManager(hsm, cfg, createAppLogger('error'), () => now);
    const key = { externalKeyId: 'weekly', label: 'weekly', enabled: true, rotation: { everyDays: 7 } };
    await m.forEncrypt(key);
    now += 8 * DAY_MS;
    await m.forEncrypt(key);
    await m.rotationsSettled();
    expect(await hsm.listKeyVersions('weekly')).to.have.length(0);
    const on = new KeyVersionManager(hsm, { ...cfg, autoRotate: true }, createAppLogger('error'), () => now);
    await on.forEncrypt(key); // first counted now: 0 days old for this manager's (in-memory) ledger
    now += 6 * DAY_MS;
    await on.forEncrypt(key);
    await on.rotationsSettled();
    expect(await hsm.listKeyVersions('weekly')).to.have.length(0);
    now += DAY_MS;
    await on.forEncrypt(key);
    await on.rotationsSettled();
    expect((await hsm.listKeyVersions('weekly')).map((v) => v.version)).to.deep.equal([1]);
  });
});
