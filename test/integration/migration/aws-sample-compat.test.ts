/**
 * keyStores[].compatibility: aws-sample. A SoftHSM2 token holds an AES key of a known value;
 * ciphertexts are made independently with node:crypto, one set with the AWS sample proxy's AAD
 * layout (uint16be(len(aad)) || SHA-256(aad) || uint8(len(md)) || md) and one with the
 * specification's. Over HTTPS: with the setting, both decrypt and only the sample ones are
 * counted; without it, the sample ones fail as InvalidCiphertextException. Encrypt keeps using
 * the specification's layout either way.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { createKey } from '../../../src/hsm/key-admin';
import { importAesKey } from '../../helpers/import-aes-key';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

const KEY_VALUE = crypto.randomBytes(32);
const md = (op: string) => ({ awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: op, kmsRequestId: crypto.randomUUID() });

/** AES-256-GCM with node:crypto, as either proxy would have sealed it. */
function seal(layout: 'spec' | 'aws-sample', plaintext: Buffer, aad: Buffer | undefined, metadata: Buffer | undefined) {
  const m = metadata ?? Buffer.alloc(0);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(aad?.length ?? 0);
  const middle = layout === 'spec' ? (aad ?? Buffer.alloc(0)) : aad ? crypto.createHash('sha256').update(aad).digest() : Buffer.alloc(0);
  const gcmAad = Buffer.concat([len, middle, Buffer.from([m.length]), m]);
  const iv = crypto.randomBytes(12);
  const c = crypto.createCipheriv('aes-256-gcm', KEY_VALUE, iv);
  c.setAAD(gcmAad);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return {
    ciphertext: ciphertext.toString('base64'),
    initializationVector: iv.toString('base64'),
    authenticationTag: c.getAuthTag().toString('base64'),
    ...(aad ? { additionalAuthenticatedData: aad.toString('base64') } : {}),
    ...(metadata ? { ciphertextMetadata: metadata.toString('base64') } : {}),
    encryptionAlgorithm: 'AES_GCM',
  };
}

describe('compatibility with the AWS sample proxy\'s ciphertexts (keyStores[].compatibility)', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  let strictCred: Credential;
  const plaintext = Buffer.from('held by KMS since the sample proxy days');
  const aad = crypto.randomBytes(96); // KMS always sends an AAD of its own
  const metadata = Buffer.from('v0.0.1');

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt', bits: 256 });
    await importAesKey(token.hsmConfig, token.pin, 'legacy', KEY_VALUE);
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    strictCred = writeCredential(path.join(token.dir, 'creds2'));
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [
        { name: 'migrated', pathPrefix: '/migrated', credentialsDir: credDir, compatibility: 'aws-sample', keys: [{ externalKeyId: 'legacy' }] },
        { name: 'strict', pathPrefix: '/strict', credentialsDir: path.join(token.dir, 'creds2'), keys: [{ externalKeyId: 'legacy' }] },
      ],
      metrics: { port: 0 },
    });
  });

  after(async function () {
    await h?.close();
    token?.cleanup();
  });

  const decrypt = (prefix: string, sealed: object) => xksCall(h, `${prefix}/kms/xks/v1/keys/legacy/decrypt`, { requestMetadata: md('Decrypt'), ...sealed }, { cred: prefix === '/migrated' ? cred : strictCred });

  async function fallbackCount(): Promise<number> {
    const res = await fetch(`http://127.0.0.1:${h.proxy.metricsPort}/metrics`);
    const m = /^xks_aws_sample_aad_decrypts_total\{key_store="migrated"\} (\d+)$/m.exec(await res.text());
    return m ? Number(m[1]) : 0;
  }

  for (const [name, a, m] of [
    ['AAD and metadata', aad, metadata],
    ['AAD, no metadata', aad, undefined],
    ['an empty AAD field', Buffer.alloc(0), undefined],
  ] as const) {
    it(`decrypts a sample-layout ciphertext (${name}) and counts it; the same fails without the setting`, async () => {
      const sealed = seal('aws-sample', plaintext, a, m);
      const before = await fallbackCount();
      const ok = await decrypt('/migrated', sealed);
      expect(ok.status, ok.text).to.equal(200);
      expect(Buffer.from(ok.json.plaintext, 'base64').equals(plaintext)).to.equal(true);
      expect(await fallbackCount()).to.equal(before + 1);
      const refused = await decrypt('/strict', sealed);
      expect(refused.status).to.equal(400);
      expect(refused.json.errorName).to.equal('InvalidCiphertextException');
    });
  }

  it('spec-layout ciphertexts decrypt in both key stores and are not counted as fallbacks', async () => {
    const sealed = seal('spec', plaintext, aad, metadata);
    const before = await fallbackCount();
    expect((await decrypt('/migrated', sealed)).status).to.equal(200);
    expect((await decrypt('/strict', sealed)).status).to.equal(200);
    expect(await fallbackCount()).to.equal(before);
  });

  it('a tampered sample ciphertext is InvalidCiphertextException under either layout', async () => {
    const sealed = seal('aws-sample', plaintext, aad, metadata);
    const otherAad = await decrypt('/migrated', { ...sealed, additionalAuthenticatedData: crypto.randomBytes(96).toString('base64') });
    expect(otherAad.json.errorName).to.equal('InvalidCiphertextException');
    const otherMetadata = await decrypt('/migrated', { ...sealed, ciphertextMetadata: Buffer.from('v0.0.2').toString('base64') });
    expect(otherMetadata.json.errorName).to.equal('InvalidCiphertextException');
  });

  it('Encrypt in a compatible key store still seals with the specification\'s layout', async () => {
    const r = await xksCall(h, '/migrated/kms/xks/v1/keys/legacy/encrypt', { requestMetadata: md('Encrypt'), plaintext: plaintext.toString('base64'), additionalAuthenticatedData: aad.toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred });
    expect(r.status).to.equal(200);
    const len = Buffer.alloc(2);
    len.writeUInt16BE(aad.length);
    const d = crypto.createDecipheriv('aes-256-gcm', KEY_VALUE, Buffer.from(r.json.initializationVector, 'base64'));
    d.setAAD(Buffer.concat([len, aad, Buffer.from([0])]));
    d.setAuthTag(Buffer.from(r.json.authenticationTag, 'base64'));
    const back = Buffer.concat([d.update(Buffer.from(r.json.ciphertext, 'base64')), d.final()]);
    expect(back.equals(plaintext)).to.equal(true);
  });
});
