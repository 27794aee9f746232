/**
 * The sealed form of a fleet credential (src/auth/credential-envelope.ts) against a real SoftHSM2
 * token: AES-GCM made in the HSM with the wrap key, and every way of moving or editing a value
 * that must make it fail to open, without the secret in any message.
 */
import { expect } from 'chai';
import { CredentialRefused, openCredential, sealCredential, type CredentialMeta, type CredentialName } from '../../../src/auth/credential-envelope';
import { generateSecret } from '../../../src/auth/credentials';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

const WRAP = 'xks-credential-wrap';

describe('fleet credential envelope (real SoftHSM2 token)', () => {
  let token: TestToken;
  let hsm: Pkcs11Backend;
  const name: CredentialName = { prefix: '/xks-proxy/prod/', keyStore: 'demo', accessKeyId: 'AAAABBBBCCCCDDDDEEEEFFFF22' };
  const meta: CredentialMeta = { wrapKeyLabel: WRAP, createdAt: '2026-11-27T10:00:00.000Z', createdBy: 'node-a' };
  const secret = generateSecret();

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: WRAP, usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'encrypt-only', usage: 'encrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'xks-data-key', usage: 'encrypt-decrypt' });
    hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
  });
  after(async () => {
    await hsm?.close();
    token?.cleanup();
  });

  /** The reason a value is refused (and that the secret is not in it). */
  async function refusal(n: CredentialName, text: string, wrapKeyLabel = WRAP): Promise<string> {
    try {
      await openCredential(hsm, n, text, wrapKeyLabel);
    } catch (e) {
      expect(e).to.be.instanceOf(CredentialRefused);
      expect((e as Error).message).to.not.include(secret);
      return (e as Error).message;
    }
    throw new Error('the value was accepted');
  }

  it('opens what it sealed; the value holds a 12-byte IV, the ciphertext and a tag, never the secret; a new IV every time', async () => {
    const text = await sealCredential(hsm, name, secret, meta);
    expect(text).to.not.include(secret);
    const v = JSON.parse(text);
    expect(v).to.include({ format: 'xks-proxy/fleet-credential', version: 1, ...meta });
    expect(Buffer.from(v.iv, 'base64')).to.have.length(12);
    expect(Buffer.from(v.tag, 'base64')).to.have.length(16);
    expect(Buffer.from(v.ciphertext, 'base64')).to.have.length(secret.length);
    expect((await openCredential(hsm, name, text, WRAP)).secret).to.equal(secret);
    const again = JSON.parse(await sealCredential(hsm, name, secret, meta));
    expect(again.iv).to.not.equal(v.iv);
    expect(again.ciphertext).to.not.equal(v.ciphertext);
  });

  it('a value moved to another prefix, key store or access key id does not authenticate', async () => {
    const text = await sealCredential(hsm, name, secret, meta);
    for (const moved of [{ ...name, prefix: '/xks-proxy/other/' }, { ...name, keyStore: 'demo2' }, { ...name, accessKeyId: 'AAAABBBBCCCCDDDDEEEEFFFF33' }]) {
      expect(await refusal(moved, text)).to.match(/does not authenticate under the wrap key "xks-credential-wrap"/);
    }
  });

  it('edited metadata, IV, ciphertext or tag does not authenticate', async () => {
    const v = JSON.parse(await sealCredential(hsm, name, secret, meta));
    const flip = (b64: string) => {
      const b = Buffer.from(b64, 'base64');
      b[b.length - 1] = b[b.length - 1]! ^ 0x80;
      return b.toString('base64');
    };
    for (const edited of [{ createdBy: 'node-b' }, { createdAt: '2026-11-27T10:00:00.001Z' }, { iv: flip(v.iv) }, { ciphertext: flip(v.ciphertext) }, { tag: flip(v.tag) }]) {
      expect(await refusal(name, JSON.stringify({ ...v, ...edited }))).to.match(/does not authenticate/);
    }
  });

  it('refuses other formats and versions, non-JSON, missing fields; names a missing or unfit wrap key', async () => {
    const v = JSON.parse(await sealCredential(hsm, name, secret, meta));
    expect(await refusal(name, JSON.stringify({ ...v, version: 2 }))).to.match(/format version 2 is not supported/);
    expect(await refusal(name, JSON.stringify({ ...v, format: 'other' }))).to.match(/is not a xks-proxy\/fleet-credential/);
    expect(await refusal(name, 'not json')).to.match(/not JSON/);
    expect(await refusal(name, JSON.stringify({ ...v, tag: undefined }))).to.match(/field "tag" is missing/);
    // A fleet configured with a wrap key the token lacks, or one that may not decrypt.
    expect(await refusal(name, JSON.stringify({ ...v, wrapKeyLabel: 'absent' }), 'absent')).to.match(/the wrap key "absent" is not in the token/);
    expect(await refusal(name, JSON.stringify({ ...v, wrapKeyLabel: 'encrypt-only' }), 'encrypt-only')).to.match(/may not encrypt and decrypt/);
    let err: Error | undefined;
    await sealCredential(hsm, name, secret, { ...meta, wrapKeyLabel: 'absent' }).catch((e: Error) => (err = e));
    expect(err?.message).to.match(/cannot encrypt the secret in the HSM with key "absent": the wrap key "absent" is not in the token/);
    expect(err?.message).to.not.include(secret);
  });

  it("refuses a value that names another key of the token than the fleet's wrap key, before any HSM call", async () => {
    // What an attacker with etcd write access and a SigV4 credential could make: a tag under an XKS
    // key (XKS Encrypt takes the caller's plaintext and AAD), in a value that names that key.
    const forged = await sealCredential(hsm, name, secret, { ...meta, wrapKeyLabel: 'xks-data-key' });
    expect(await refusal(name, forged)).to.equal(`the value names the HSM key "xks-data-key", not this fleet's wrap key "${WRAP}" (control.etcd.credentialWrapKeyLabel)`);
    // Opened with the key it names, it is a valid value: only the label check stands in the way.
    expect((await openCredential(hsm, name, forged, 'xks-data-key')).secret).to.equal(secret);
  });
});
