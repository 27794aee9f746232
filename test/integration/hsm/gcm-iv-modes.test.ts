/**
 * hsm.ivMode on a REAL SoftHSM2 token. SoftHSM2 cannot generate GCM IVs, so for 'hsm-params'
 * (AWS CloudHSM) and 'hsm-appended' (Luna in FIPS mode) the backend gets the real module wrapped by
 * test/helpers/iv-emulating-module.ts, which draws the IV and reports it the vendor's way; the
 * crypto is still SoftHSM2's. Decryption always goes through a backend on the UNWRAPPED module, so
 * a round trip proves that the IV the proxy reports is the one the HSM encrypted with.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { HsmConfig } from '../../../src/config/schema';
import { XksError } from '../../../src/errors/xks-error';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { computeCdiv } from '../../../src/xks/cdiv';
import { ivEmulator, type EmulatedIvVendor, type IvEmulator } from '../../helpers/iv-emulating-module';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectNoIvReuse } from '../../helpers/iv-uniqueness';
import { expectXks, flip } from '../../helpers/xks-expect';
import { wrappedModule } from '../../helpers/wrapped-module';

const KEY = 'k-iv-modes';

describe('hsm.ivMode: who produces the GCM IV (real SoftHSM2, vendor IV generation emulated)', function () {
  this.timeout(60000);

  let tk: TestToken;
  /** The real module, no emulation: decrypts everything, and is the 'proxy' mode backend. */
  let plain: Pkcs11Backend;
  const opened: Pkcs11Backend[] = [];

  async function open(ivMode: HsmConfig['ivMode'], vendor?: EmulatedIvVendor): Promise<{ backend: Pkcs11Backend; emu: IvEmulator | undefined }> {
    const emu = vendor ? ivEmulator(vendor) : undefined;
    const backend = await openPkcs11Backend({ ...tk.hsmConfig, ivMode }, tk.pin, createSilentLogger(), emu ? wrappedModule(emu.wrap) : undefined);
    opened.push(backend);
    return { backend, emu };
  }

  before(async () => {
    tk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: KEY, usage: 'encrypt-decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    plain = (await open('proxy')).backend;
  });

  after(async () => {
    for (const b of opened) await b.close();
    tk?.cleanup();
  });

  const modes: { name: string; ivMode: HsmConfig['ivMode']; vendor?: EmulatedIvVendor; ivBytes: number }[] = [
    { name: "'proxy' on SoftHSM2", ivMode: 'proxy', ivBytes: 12 },
    { name: "'hsm-params' on an emulated CloudHSM", ivMode: 'hsm-params', vendor: { mode: 'hsm-params' }, ivBytes: 12 },
    { name: "'hsm-appended' on an emulated Luna (FIPS, 12-byte IV firmware)", ivMode: 'hsm-appended', vendor: { mode: 'hsm-appended', ivBytes: 12 }, ivBytes: 12 },
    { name: "'hsm-appended' on an emulated Luna (FIPS, 16-byte IV firmware)", ivMode: 'hsm-appended', vendor: { mode: 'hsm-appended', ivBytes: 16 }, ivBytes: 16 },
  ];

  for (const m of modes) {
    describe(m.name, () => {
      let backend: Pkcs11Backend;
      let emu: IvEmulator | undefined;
      before(async () => {
        ({ backend, emu } = m.vendor ? await open(m.ivMode, m.vendor) : { backend: plain, emu: undefined });
      });

      it(`round-trips: a ${m.ivBytes}-byte IV, the one the HSM used, decrypts on the plain module`, async () => {
        const pt = randomBytes(300);
        const aad = randomBytes(40);
        const r = await backend.encrypt(KEY, pt, aad);
        expect(r.iv).to.have.length(m.ivBytes);
        expect(r.tag).to.have.length(16);
        expect(r.ciphertext).to.have.length(pt.length);
        if (emu) expect(r.iv.equals(emu.generated.at(-1)!), 'the reported IV is the generated one').to.equal(true);
        expect((await plain.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
        expect((await backend.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
      });

      it('a fresh, non-zero IV on every call', async () => {
        // The check is shown able to fail in pkcs11-backend.test.ts (a module that repeats an IV).
        const results = [];
        for (let i = 0; i < 32; i++) results.push(await backend.encrypt(KEY, Buffer.from('same plaintext'), Buffer.from('same aad')));
        expectNoIvReuse(results);
      });

      it('a tampered tag or IV does not decrypt', async () => {
        const aad = Buffer.from('aad');
        const r = await backend.encrypt(KEY, Buffer.from('tamper me'), aad);
        await expectXks(plain.decrypt(KEY, r.ciphertext, r.iv, flip(r.tag, 7), aad), 'InvalidCiphertextException');
        await expectXks(plain.decrypt(KEY, r.ciphertext, flip(r.iv, 3), r.tag, aad), 'InvalidCiphertextException');
      });

      it('a 4300-byte plaintext with 8 KiB of AAD (output buffer sizing)', async () => {
        const pt = randomBytes(4300);
        const aad = randomBytes(8192);
        const r = await backend.encrypt(KEY, pt, aad);
        expect(r.ciphertext).to.have.length(4300);
        expect((await plain.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
      });
    });
  }

  it("asks for the IV the vendor way ('hsm-params': a zero-filled 12-byte pIv, ulIvBits 96; 'hsm-appended': an empty one), through its own wrapper only", async () => {
    const params = await open('hsm-params', { mode: 'hsm-params' });
    const appended = await open('hsm-appended', { mode: 'hsm-appended', ivBytes: 16 });
    await params.backend.encrypt(KEY, Buffer.from('x'), Buffer.alloc(0));
    await appended.backend.encrypt(KEY, Buffer.from('x'), Buffer.alloc(0));
    // The wrappers belong to their backends only: a backend opened now on the same (shared,
    // cached) module, and the one opened before, encrypt without going through them.
    await (await open('proxy')).backend.encrypt(KEY, Buffer.from('x'), Buffer.alloc(0));
    await plain.encrypt(KEY, Buffer.from('x'), Buffer.alloc(0));
    expect(params.emu!.seen).to.deep.equal([{ ivLength: 12, ivBits: 96 }]);
    expect(appended.emu!.seen).to.deep.equal([{ ivLength: 0, ivBits: 0 }]);
  });

  it("'proxy' on an HSM that writes its IV into the parameters reports that IV (pkcs11js shares the Buffer)", async () => {
    // Not a supported set-up (use 'hsm-params', which checks the write-back), but it must not
    // report an IV the HSM did not use.
    const { backend, emu } = await open('proxy', { mode: 'hsm-params' });
    const r = await backend.encrypt(KEY, Buffer.from('pt'), Buffer.from('aad'));
    expect(r.iv.equals(emu!.generated.at(-1)!)).to.equal(true);
    expect((await plain.decrypt(KEY, r.ciphertext, r.iv, r.tag, Buffer.from('aad'))).toString()).to.equal('pt');
  });

  describe('fail closed: a mode that does not match the HSM is InternalException, nothing returned', () => {
    const cases: { name: string; ivMode: HsmConfig['ivMode']; vendor?: EmulatedIvVendor; detail: RegExp }[] = [
      { name: "'hsm-params' on plain SoftHSM2 (pIv stays zero)", ivMode: 'hsm-params', detail: /hsm\.ivMode "hsm-params" does not match the HSM: the IV in CK_GCM_PARAMS\.pIv after C_Encrypt is all zero/ },
      { name: "'hsm-appended' on plain SoftHSM2 (nothing appended)", ivMode: 'hsm-appended', detail: /hsm\.ivMode "hsm-appended" does not match the HSM: .* so 0 bytes after the tag/ },
      { name: "'proxy' on an appending HSM (no room for its IV)", ivMode: 'proxy', vendor: { mode: 'hsm-appended', ivBytes: 12 }, detail: /CKR_BUFFER_TOO_SMALL .* in C_Encrypt/ },
      { name: "'hsm-params' on an appending HSM", ivMode: 'hsm-params', vendor: { mode: 'hsm-appended', ivBytes: 16 }, detail: /CKR_BUFFER_TOO_SMALL .* in C_Encrypt/ },
      { name: "'hsm-appended' on a parameters-writing HSM (refuses an empty IV)", ivMode: 'hsm-appended', vendor: { mode: 'hsm-params' }, detail: /CKR_MECHANISM_PARAM_INVALID .* in C_EncryptInit/ },
    ];
    for (const c of cases) {
      it(c.name, async () => {
        const { backend } = await open(c.ivMode, c.vendor);
        const e = await expectXks(backend.encrypt(KEY, Buffer.from('never returned'), Buffer.from('aad')), 'InternalException');
        expect(e.detail).to.match(c.detail);
        expect(e.message).to.equal(new XksError('InternalException').message, 'the client sees the generic message only');
        expect(backend.poolStats().inUse).to.equal(0);
        // Decrypt does not depend on the mode: the backend still decrypts what others encrypted.
        const good = await plain.encrypt(KEY, Buffer.from('still fine'), Buffer.alloc(0));
        expect((await backend.decrypt(KEY, good.ciphertext, good.iv, good.tag, Buffer.alloc(0))).toString()).to.equal('still fine');
      });
    }
  });

  describe('through the proxy over HTTPS: a 16-byte IV (Luna FIPS, older firmware), with a CDIV', () => {
    let h: Harness;
    let cred: Credential;
    before(async () => {
      const { backend } = await open('hsm-appended', { mode: 'hsm-appended', ivBytes: 16 });
      opened.pop(); // the proxy closes the backend it was given
      const credDir = path.join(tk.dir, 'creds');
      cred = writeCredential(credDir);
      h = await startHarness(
        { hsm: { ...tk.hsmConfig, ivMode: 'hsm-appended', pin: { file: tk.pinFile } }, keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: credDir, keys: [{ externalKeyId: KEY }] }] },
        { hsm: backend },
      );
    });
    after(async () => {
      await h?.close();
    });

    const requestMetadata = (kmsOperation: string) => ({ awsPrincipalArn: 'arn:aws:iam::111122223333:user/t', kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/t', kmsOperation, kmsRequestId: 'r' });

    it('Encrypt answers the 16-byte IV and a CDIV over it (after the proving decrypt); Decrypt takes it back', async () => {
      expect((await h.proxy.health.check()).status).to.equal('ACTIVE');
      const pt = randomBytes(64);
      const aad = randomBytes(20);
      const enc = await xksCall(
        h,
        `/a/kms/xks/v1/keys/${KEY}/encrypt`,
        { requestMetadata: requestMetadata('Encrypt'), plaintext: pt.toString('base64'), additionalAuthenticatedData: aad.toString('base64'), encryptionAlgorithm: 'AES_GCM', ciphertextDataIntegrityValueAlgorithm: 'SHA_256' },
        { cred },
      );
      expect(enc.status, enc.text).to.equal(200);
      const iv = Buffer.from(enc.json.initializationVector, 'base64');
      const ciphertext = Buffer.from(enc.json.ciphertext, 'base64');
      const tag = Buffer.from(enc.json.authenticationTag, 'base64');
      expect(iv).to.have.length(16);
      expect(enc.json.ciphertextDataIntegrityValue).to.equal(computeCdiv({ aad, iv, ciphertext, tag }));
      const dec = await xksCall(
        h,
        `/a/kms/xks/v1/keys/${KEY}/decrypt`,
        { requestMetadata: requestMetadata('Decrypt'), ciphertext: enc.json.ciphertext, initializationVector: enc.json.initializationVector, authenticationTag: enc.json.authenticationTag, additionalAuthenticatedData: aad.toString('base64'), encryptionAlgorithm: 'AES_GCM' },
        { cred },
      );
      expect(dec.status, dec.text).to.equal(200);
      expect(Buffer.from(dec.json.plaintext, 'base64').equals(pt)).to.equal(true);
    });
  });
});
