/**
 * Key versions behind one externalKeyId, end to end: real SoftHSM2 token, real HTTPS, requests
 * signed by the independent signer. Encrypt, rotate, encrypt, both decrypt; ciphertextMetadata
 * tampering; a second proxy on the same token sees a rotation; a key never rotated answers as
 * before (no metadata).
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { createKey } from '../../../src/hsm/key-admin';
import { listKeyVersions, rotateKey } from '../../../src/hsm/key-version-admin';
import { b64, eventually, sealedOf, xksClient, type Sealed } from '../../helpers/key-version-client';
import { startHarness, writeCredential, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

const v1Metadata = Buffer.from([0x01, 0, 0, 0, 1]);

describe('key versions: rotation behind one externalKeyId (ciphertextMetadata)', function () {
  let token: TestToken;
  let a: Harness;
  let b: Harness;
  let cred: Credential;
  const plaintext = Buffer.from('a data key KMS wraps');
  const aad = crypto.randomBytes(64);

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    for (const label of ['rotated', 'untouched', 'shared']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    const config = (rescanIntervalMs: number) => ({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: credDir, keys: [{ externalKeyId: 'rotated' }, { externalKeyId: 'untouched' }, { externalKeyId: 'shared' }] }],
      keyVersions: { rescanIntervalMs },
    });
    // Proxy A re-reads the versions often; proxy B (the same token) only every hour, so that
    // what B sees of A's rotation comes from the metadata naming an unknown version.
    a = await startHarness(config(200));
    b = await startHarness(config(3_600_000));
  });

  after(async function () {
    await a?.close();
    await b?.close();
    token?.cleanup();
  });

  it('encrypt, rotate, encrypt: both ciphertexts decrypt; the new one names version 1; GetKeyMetadata is unchanged', async () => {
    const c = xksClient(a, cred);
    const metaBefore = (await c.metadata('rotated')).json;
    const old = await c.encrypt('rotated', plaintext, aad);
    expect(old.status, old.text).to.equal(200);
    expect(old.json.ciphertextMetadata, 'a key never rotated returns no metadata').to.equal(undefined);

    expect(await rotateKey(token.hsmConfig, token.pin, 'rotated')).to.equal(1);
    const fresh = await eventually(async () => {
      const r = await c.encrypt('rotated', plaintext, aad);
      expect(r.status, r.text).to.equal(200);
      return r.json.ciphertextMetadata !== undefined ? r.json : undefined;
    }, 'Encrypt uses version 1');
    expect(Buffer.from(fresh.ciphertextMetadata, 'base64').equals(v1Metadata)).to.equal(true);

    for (const s of [sealedOf(old.json), sealedOf(fresh)]) {
      const d = await c.decrypt('rotated', s, aad);
      expect(d.status, d.text).to.equal(200);
      expect(Buffer.from(d.json.plaintext, 'base64').equals(plaintext)).to.equal(true);
    }
    expect((await c.metadata('rotated')).json).to.deep.equal(metaBefore);
    // The new version is AES-256 with the same usage, in the token under its own label.
    const versions = await listKeyVersions(token.hsmConfig, token.pin, 'rotated');
    expect(versions.map((v) => v.version)).to.deep.equal([1]);
    expect(Math.abs(Date.parse(versions[0]!.created!) - Date.now())).to.be.below(3_600_000);
    expect(versions[0]!.hsmLabel).to.equal(`rotated#v1@${versions[0]!.created}`);
  });

  it('the CDIV of a rotated key covers its ciphertextMetadata (spec Appendix C)', async () => {
    const r = await xksClient(a, cred).encrypt('rotated', plaintext, aad, { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
    expect(r.status, r.text).to.equal(200);
    const s = sealedOf(r.json);
    const want = crypto
      .createHash('sha256')
      .update(Buffer.concat([aad, Buffer.from(s.ciphertextMetadata!, 'base64'), Buffer.from(s.initializationVector, 'base64'), Buffer.from(s.ciphertext, 'base64'), Buffer.from(s.authenticationTag, 'base64')]))
      .digest('base64');
    expect(r.json.ciphertextDataIntegrityValue).to.equal(want);
  });

  it('tampered, removed, added or unknown metadata is InvalidCiphertextException, all with the same message', async () => {
    const c = xksClient(a, cred);
    const v0 = sealedOf((await c.encrypt('untouched', plaintext, aad)).json);
    const v1 = sealedOf((await c.encrypt('rotated', plaintext, aad)).json);
    expect(v1.ciphertextMetadata).to.not.equal(undefined);
    const { ciphertextMetadata: _dropped, ...v1Bare } = v1;
    const cases: [string, string, Sealed][] = [
      ['version 1 named as 2 (no such version)', 'rotated', { ...v1, ciphertextMetadata: b64(Buffer.from([1, 0, 0, 0, 2])) }],
      ['version 1 named as 0x01 || 2^32-1', 'rotated', { ...v1, ciphertextMetadata: b64(Buffer.from([1, 0xff, 0xff, 0xff, 0xff])) }],
      ['format byte changed', 'rotated', { ...v1, ciphertextMetadata: b64(Buffer.from([2, 0, 0, 0, 1])) }],
      ['a byte appended', 'rotated', { ...v1, ciphertextMetadata: b64(Buffer.from([1, 0, 0, 0, 1, 0])) }],
      ['metadata removed from a version 1 ciphertext', 'rotated', v1Bare],
      ['version 1 metadata added to a ciphertext of a key never rotated', 'untouched', { ...v0, ciphertextMetadata: b64(v1Metadata) }],
    ];
    const messages = new Set<string>();
    for (const [name, key, s] of cases) {
      const r = await c.decrypt(key, s, aad);
      expect(r.status, name).to.equal(400);
      expect(r.json.errorName, name).to.equal('InvalidCiphertextException');
      messages.add(r.json.errorMessage);
    }
    // The same answer as a flipped tag: nothing tells which versions exist.
    const tag = Buffer.from(v1.authenticationTag, 'base64');
    tag[0] ^= 1;
    messages.add((await c.decrypt('rotated', { ...v1, authenticationTag: tag.toString('base64') }, aad)).json.errorMessage);
    expect([...messages]).to.have.length(1);
  });

  it('a second proxy on the same token decrypts a new version at once and encrypts with it after a rescan', async () => {
    const ca = xksClient(a, cred);
    const cb = xksClient(b, cred);
    // B reads the versions of "shared" (none) and caches them for an hour.
    const before = await cb.encrypt('shared', plaintext, aad);
    expect(before.json.ciphertextMetadata).to.equal(undefined);
    // A rotates through its own manager (as keyVersions.autoRotate would).
    await a.proxy.versions.rotate('shared', 0);
    const fromA = await eventually(async () => {
      const r = await ca.encrypt('shared', plaintext, aad);
      return r.json.ciphertextMetadata !== undefined ? sealedOf(r.json) : undefined;
    }, 'A encrypts with version 1');
    const d = await cb.decrypt('shared', fromA, aad);
    expect(d.status, d.text).to.equal(200);
    expect(Buffer.from(d.json.plaintext, 'base64').equals(plaintext)).to.equal(true);
    // Having looked again, B now encrypts with version 1 too.
    const after = await cb.encrypt('shared', plaintext, aad);
    expect(after.json.ciphertextMetadata).to.equal(b64(v1Metadata));
    // Asking again to rotate from version 0 does nothing: rotation is a compare-and-set.
    await b.proxy.versions.rotate('shared', 0);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'shared')).map((v) => v.version)).to.deep.equal([1]);
  });
});
