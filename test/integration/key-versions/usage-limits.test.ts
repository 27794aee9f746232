/**
 * Encryption counts and the GCM limit through the real proxy (SoftHSM2, HTTPS): counts survive a
 * restart, the rotation threshold generates a new version (once), the hard limit stops Encrypt
 * while Decrypt goes on, and a hard limit that cannot be rotated past (the HSM refuses key
 * generation: fault injection on top of the real backend) fails Encrypt with a clear error.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { XksError } from '../../../src/errors/xks-error';
import { createKey } from '../../../src/hsm/key-admin';
import { listKeyVersions } from '../../../src/hsm/key-version-admin';
import { DelegatingBackend } from '../../../src/hsm/delegating-backend';
import { openPkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createAppLogger } from '../../../src/log/logger';
import { main } from '../../../src/cli/index';
import { captureOutput } from '../../helpers/capture-output';
import { startHarness, writeCredential, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { eventually, xksClient } from '../../helpers/key-version-client';

/** The HSM refuses to generate keys (an encrypt-only appliance): rotations fail. */
class NoKeyGeneration extends DelegatingBackend {
  override createKeyVersion(): Promise<number> {
    return Promise.reject(new XksError('InternalException', undefined, 'scripted: key generation refused'));
  }
}

describe('key versions: encryption counts, the rotation threshold and the GCM limit', function () {
  let token: TestToken;
  let cred: Credential;
  let credDir: string;
  const running: Harness[] = [];
  const plaintext = Buffer.from('x');
  const aad = crypto.randomBytes(16);

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    for (const label of ['counted', 'auto', 'capped', 'rollover', 'stuck']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
  });

  afterEach(async function () {
    while (running.length) await running.pop()!.close();
  });

  after(() => token?.cleanup());

  async function start(keyVersions: Record<string, unknown>, hsm?: DelegatingBackend): Promise<Harness> {
    const h = await startHarness(
      {
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
        keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: credDir, keys: ['counted', 'auto', 'capped', 'rollover', 'stuck'].map((externalKeyId) => ({ externalKeyId })) }],
        keyVersions: { usageDir: path.join(token.dir, 'usage'), ...keyVersions },
      },
      hsm ? { hsm } : {},
    );
    running.push(h);
    return h;
  }

  async function versionsJson(h: Harness, label: string): Promise<any> {
    const r = await captureOutput(() => main(['keys', 'versions', '--label', label, '--json', '--config', h.configFile]));
    expect(r.code, r.err).to.equal(0);
    return JSON.parse(r.out);
  }

  it('a usageDir that cannot be a folder stops the start with a message naming the setting', async () => {
    const notAFolder = path.join(token.dir, 'a-file');
    fs.writeFileSync(notAFolder, 'x');
    const err = await start({ usageDir: path.join(notAFolder, 'usage') }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).to.match(/^keyVersions\.usageDir: /);
  });

  it('counts survive a restart: counted before use, in blocks, and `keys versions` shows them', async () => {
    let h = await start({ reserveBlock: 10 });
    for (let i = 0; i < 3; i++) expect((await xksClient(h, cred).encrypt('counted', plaintext, aad)).status).to.equal(200);
    // Still running, as after a kill -9: the ledger already holds the whole block.
    expect((await versionsJson(h, 'counted')).versions[0]).to.include({ version: 0, state: 'current', encryptions: 10 });
    await running.pop()!.close();
    h = await start({ reserveBlock: 10 });
    const c = xksClient(h, cred);
    const e = await c.encrypt('counted', plaintext, aad);
    expect(e.status).to.equal(200);
    expect((await c.decrypt('counted', { ciphertext: e.json.ciphertext, initializationVector: e.json.initializationVector, authenticationTag: e.json.authenticationTag }, aad)).status).to.equal(200);
    await h.proxy.versions.close(); // writes the decrypt count now
    const v0 = (await versionsJson(h, 'counted')).versions[0];
    expect(v0).to.include({ encryptions: 20, decrypts: 1 });
  });

  it('reaching rotation.atEncryptions generates one new version, which Encrypt then uses', async () => {
    const h = await start({ reserveBlock: 1, autoRotate: true, rotation: { atEncryptions: 3 } });
    const c = xksClient(h, cred);
    const first = [];
    for (let i = 0; i < 3; i++) {
      const r = await c.encrypt('auto', plaintext, aad);
      expect(r.status).to.equal(200);
      first.push(r.json.ciphertextMetadata);
    }
    expect(first).to.deep.equal([undefined, undefined, undefined]);
    await eventually(async () => ((await c.encrypt('auto', plaintext, aad)).json.ciphertextMetadata === Buffer.from([1, 0, 0, 0, 1]).toString('base64') ? true : undefined), 'Encrypt uses version 1');
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'auto')).map((v) => v.version)).to.deep.equal([1]);
    const status = await h.proxy.versions.statusOf({ externalKeyId: 'auto', label: 'auto', enabled: true });
    expect(status.current).to.equal(1);
    expect(status.versions.find((v) => v.version === 0)?.usage.encryptions).to.equal(3);
  });

  it('at keyVersions.encryptionLimit Encrypt fails (InvalidStateException) and Decrypt still works', async () => {
    const h = await start({ reserveBlock: 1, encryptionLimit: 2 });
    const c = xksClient(h, cred);
    const sealed = [];
    for (let i = 0; i < 2; i++) {
      const r = await c.encrypt('capped', plaintext, aad);
      expect(r.status).to.equal(200);
      sealed.push({ ciphertext: r.json.ciphertext, initializationVector: r.json.initializationVector, authenticationTag: r.json.authenticationTag });
    }
    const refused = await c.encrypt('capped', plaintext, aad);
    expect(refused.status).to.equal(400);
    expect(refused.json.errorName).to.equal('InvalidStateException');
    expect(refused.json.errorMessage).to.match(/encryption limit/);
    for (const s of sealed) expect((await c.decrypt('capped', s, aad)).status).to.equal(200);
    expect(h.requestLog()).to.match(/reached keyVersions\.encryptionLimit/);
  });

  it('at the limit with autoRotate a new version takes over; if the HSM refuses to generate, Encrypt fails clearly', async () => {
    let h = await start({ reserveBlock: 1, encryptionLimit: 2, autoRotate: true, rotation: {} });
    let c = xksClient(h, cred);
    for (let i = 0; i < 2; i++) expect((await c.encrypt('rollover', plaintext, aad)).json.ciphertextMetadata).to.equal(undefined);
    // No rotation trigger but the limit: the third Encrypt waits for version 1 and uses it.
    const next = await c.encrypt('rollover', plaintext, aad);
    expect(next.status, next.text).to.equal(200);
    expect(next.json.ciphertextMetadata).to.equal(Buffer.from([1, 0, 0, 0, 1]).toString('base64'));
    await running.pop()!.close();

    const log = createAppLogger('error');
    const real = await openPkcs11Backend(token.hsmConfig, token.pin, log);
    h = await start({ reserveBlock: 1, encryptionLimit: 2, autoRotate: true, rotation: {} }, new NoKeyGeneration(real));
    c = xksClient(h, cred);
    for (let i = 0; i < 2; i++) expect((await c.encrypt('stuck', plaintext, aad)).status).to.equal(200);
    const refused = await c.encrypt('stuck', plaintext, aad);
    expect(refused.json.errorName).to.equal('InvalidStateException');
    expect(h.appLog()).to.match(/automatic key rotation failed/);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'stuck')).length).to.equal(0);
  });
});
