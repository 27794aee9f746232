/**
 * Key version changes reach the audit chain: a rotation this proxy makes ("rotated") and one made
 * elsewhere (the CLI, another proxy) the first time this proxy reads it ("observed").
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { generateSigningKeyPair } from '../../../src/audit/signing';
import { createKey } from '../../../src/hsm/key-admin';
import { rotateKey } from '../../../src/hsm/key-version-admin';
import { eventually, xksClient } from '../../helpers/key-version-client';
import { startHarness, writeCredential, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

describe('key versions in the audit log', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  let auditFile: string;
  const records = () =>
    fs
      .readFileSync(auditFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; action?: string; scope?: string; outcome?: string; detail?: string });

  before(async function () {
    token = createTestToken();
    for (const label of ['xks-health', 'kv']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    const priv = path.join(token.dir, 'audit-keys', 'signing.jwk');
    await generateSigningKeyPair(priv, path.join(token.dir, 'audit-keys', 'signing.pub.jwk'));
    auditFile = path.join(token.dir, 'audit', 'audit.log');
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: credDir, keys: [{ externalKeyId: 'kv' }] }],
      keyVersions: { rescanIntervalMs: 100 },
      audit: { file: auditFile, signingKeyFile: priv },
    });
  });

  after(async function () {
    await h?.close();
    token?.cleanup();
  });

  it('a rotation by this proxy is audited as rotated, one by the CLI as observed', async () => {
    const c = xksClient(h, cred);
    expect((await c.encrypt('kv', Buffer.from('x'), Buffer.from('aad'))).status).to.equal(200);
    await h.proxy.versions.rotate('kv', 0);
    expect(await rotateKey(token.hsmConfig, token.pin, 'kv')).to.equal(2);
    // Encrypt until this proxy uses version 2: by then it has read the CLI's rotation.
    await eventually(async () => ((await c.encrypt('kv', Buffer.from('x'), Buffer.from('aad'))).json.ciphertextMetadata === Buffer.from([1, 0, 0, 0, 2]).toString('base64') ? true : undefined), 'version 2 in use');
    const events = records().filter((r) => r.type === 'admin' && r.action?.startsWith('key-version.'));
    expect(events.map((e) => [e.action, e.scope, e.outcome, e.detail])).to.deep.equal([
      ['key-version.rotated', 'hsmkey:kv', 'ok', 'version 1'],
      ['key-version.observed', 'hsmkey:kv', 'ok', 'version 2'],
    ]);
  });
});
