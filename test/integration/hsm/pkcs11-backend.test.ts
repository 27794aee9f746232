/**
 * Pkcs11Backend and key-admin against a REAL SoftHSM2 token (test/helpers/softhsm-token.ts).
 *
 * Faults are injected the way they happen in the field: a second pkcs11js instance on the same
 * module (same process, so the same SoftHSM2 state) closes every session on the token, or
 * finalises the module, under the backend's feet.
 */
import { expect } from 'chai';
import { createDecipheriv, createCipheriv, randomBytes } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { XksError } from '../../../src/errors/xks-error';
import { createKey, listKeys } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { captureLogger } from '../../helpers/capture-logger';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectNoIvReuse, ivRepeatingModule, type Encrypted } from '../../helpers/iv-uniqueness';
import { expectXks, flip } from '../../helpers/xks-expect';
import { wrappedModule } from '../../helpers/wrapped-module';

async function errorOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    expect(e).to.be.instanceOf(Error);
    return e as Error;
  }
  throw new Error('expected a rejection');
}

/**
 * Another user of the same PKCS#11 module in this process: what a careless library, an operator
 * tool or a token reset looks like from the backend's point of view.
 */
class OtherModuleUser {
  readonly p = new pkcs11js.PKCS11();
  constructor(modulePath: string) {
    this.p.load(modulePath);
    try {
      this.p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      if ((e as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
    }
  }
  slot(label: string): pkcs11js.Handle {
    const slot = this.p.C_GetSlotList(true).find((s) => this.p.C_GetTokenInfo(s).label.trim() === label);
    if (!slot) throw new Error(`token ${label} not visible`);
    return slot;
  }
  /** Runs fn in a session of ours; the backend's login (per process and token) applies to it. */
  withSession<R>(label: string, fn: (s: pkcs11js.Handle) => R): R {
    const s = this.p.C_OpenSession(this.slot(label), pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
    try {
      return fn(s);
    } finally {
      this.p.C_CloseSession(s);
    }
  }
  findKeys(label: string, s: pkcs11js.Handle): pkcs11js.Handle[] {
    this.p.C_FindObjectsInit(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_LABEL, value: label },
    ]);
    try {
      return this.p.C_FindObjects(s, 10);
    } finally {
      this.p.C_FindObjectsFinal(s);
    }
  }
}

describe('Pkcs11Backend against a real SoftHSM2 token', function () {
  this.timeout(60000);

  let tk: TestToken;
  /** A token nobody logs in to: wrong-PIN tests must not ride on an existing login (rule 4). */
  let pinTk: TestToken;
  let backend: Pkcs11Backend;
  const cap = captureLogger();
  /** Planted in plaintexts and AADs: must never show up in a log line. */
  const CANARY = 'CANARY-7f3e-plaintext-must-not-be-logged';

  const K = {
    ed: 'k-enc-dec',
    ed2: 'k-enc-dec-2',
    e: 'k-enc-only',
    d: 'k-dec-only',
    none: 'k-none',
    aes128: 'k-aes-128',
    aes192: 'k-aes-192',
    mutable: 'k-mutable',
    rotate: 'k-rotate',
  };

  before(async () => {
    // Tokens first, then keys, then the backend (helper rule 2).
    tk = createTestToken();
    pinTk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: K.ed, usage: 'encrypt-decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.ed2, usage: 'encrypt-decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.e, usage: 'encrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.d, usage: 'decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.none, usage: 'none' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.aes128, usage: 'encrypt-decrypt', bits: 128 });
    await createKey(tk.hsmConfig, tk.pin, { label: K.aes192, usage: 'encrypt-decrypt', bits: 192 });
    await createKey(tk.hsmConfig, tk.pin, { label: K.mutable, usage: 'encrypt-decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: K.rotate, usage: 'encrypt-decrypt' });
    backend = await openPkcs11Backend(tk.hsmConfig, tk.pin, cap.log);
  });

  after(async () => {
    await backend?.close();
    tk?.cleanup();
    pinTk?.cleanup();
  });

  describe('AES-256-GCM', () => {
    it('round-trips with AAD; IV 12 bytes, tag 16, ciphertext as long as the plaintext', async () => {
      const pt = Buffer.from(`${CANARY} round trip`);
      const aad = Buffer.from(`${CANARY} aad`);
      const r = await backend.encrypt(K.ed, pt, aad);
      expect(r.iv).to.have.length(12);
      expect(r.tag).to.have.length(16);
      expect(r.ciphertext).to.have.length(pt.length);
      expect(r.ciphertext.equals(pt)).to.equal(false);
      const back = await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, aad);
      expect(back.equals(pt)).to.equal(true);
    });

    /** 400 encryptions of one input: more than one pool of proxy IVs (341, iv-source.ts). */
    async function encryptSameInput(b: Pkcs11Backend): Promise<Encrypted[]> {
      const results: Encrypted[] = [];
      for (let i = 0; i < 400; i++) results.push(await b.encrypt(K.ed, Buffer.from('same plaintext every time'), Buffer.from('same aad')));
      return results;
    }

    it('uses a fresh IV on every call (and so a different ciphertext for the same input)', async () => {
      const results = await encryptSameInput(backend);
      for (const r of results) expect(r.iv).to.have.length(12);
      expectNoIvReuse(results);
    });

    it('... a check that catches an IV used twice (it can fail)', async () => {
      // The same check on a backend whose module encrypts every 50th call under an earlier IV.
      const repeating = await openPkcs11Backend(tk.hsmConfig, tk.pin, cap.log, wrappedModule(ivRepeatingModule(50)));
      try {
        const results = await encryptSameInput(repeating);
        expect(() => expectNoIvReuse(results)).to.throw(/an IV was used twice/);
      } finally {
        await repeating.close();
      }
    });

    it('handles a 4300-byte plaintext with 8192+3 bytes of AAD', async () => {
      const pt = randomBytes(4300);
      const aad = randomBytes(8192 + 3);
      const r = await backend.encrypt(K.ed, pt, aad);
      expect(r.ciphertext).to.have.length(4300);
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
    });

    it('round-trips with an empty AAD, which then must stay empty', async () => {
      const pt = Buffer.from('no aad');
      const r = await backend.encrypt(K.ed, pt, Buffer.alloc(0));
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.alloc(0))).equals(pt)).to.equal(true);
      await expectXks(backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('x')), 'InvalidCiphertextException');
    });

    it('refuses an empty plaintext before the HSM (SoftHSM2 would leave the session dirty)', async () => {
      await expectXks(backend.encrypt(K.ed, Buffer.alloc(0), Buffer.from('aad')), 'ValidationException');
    });

    describe('tampering -> InvalidCiphertextException, with the session kept', () => {
      const pt = Buffer.from(`${CANARY} tamper`);
      const aad = Buffer.from('tamper aad');
      let good: { ciphertext: Buffer; iv: Buffer; tag: Buffer };
      before(async () => {
        good = await backend.encrypt(K.ed, pt, aad);
      });

      const cases: [string, () => [Buffer, Buffer, Buffer, Buffer]][] = [
        ['a flipped ciphertext bit', () => [flip(good.ciphertext, 3), good.iv, good.tag, aad]],
        ['a truncated ciphertext', () => [good.ciphertext.subarray(1), good.iv, good.tag, aad]],
        ['an extended ciphertext', () => [Buffer.concat([good.ciphertext, Buffer.from([0])]), good.iv, good.tag, aad]],
        ['an empty ciphertext', () => [Buffer.alloc(0), good.iv, good.tag, aad]],
        ['a flipped IV bit', () => [good.ciphertext, flip(good.iv, 5), good.tag, aad]],
        ['a 16-byte IV instead of the 12-byte one', () => [good.ciphertext, Buffer.concat([good.iv, Buffer.alloc(4)]), good.tag, aad]],
        ['a flipped tag bit', () => [good.ciphertext, good.iv, flip(good.tag, 15), aad]],
        ['a flipped AAD bit', () => [good.ciphertext, good.iv, good.tag, flip(aad, 2)]],
        ['a missing AAD', () => [good.ciphertext, good.iv, good.tag, Buffer.alloc(0)]],
        ['an IV of 8 bytes', () => [good.ciphertext, good.iv.subarray(0, 8), good.tag, aad]],
        ['an IV of 13 bytes', () => [good.ciphertext, Buffer.concat([good.iv, Buffer.alloc(1)]), good.tag, aad]],
        ['a tag of 12 bytes', () => [good.ciphertext, good.iv, good.tag.subarray(0, 12), aad]],
        ['a tag of 17 bytes', () => [good.ciphertext, good.iv, Buffer.concat([good.tag, Buffer.alloc(1)]), aad]],
      ];
      for (const [name, make] of cases) {
        it(name, async () => {
          const before = backend.poolStats();
          const [ct, iv, tag, a] = make();
          const e = await expectXks(backend.decrypt(K.ed, ct, iv, tag, a), 'InvalidCiphertextException');
          // No oracle: the client sees the generic message only.
          expect(e.message).to.equal(new XksError('InvalidCiphertextException').message);
          expect(backend.poolStats().size).to.equal(before.size, 'the session was kept, not dropped');
          expect(backend.poolStats().inUse).to.equal(0);
        });
      }

      it('leaves the sessions usable afterwards', async () => {
        expect((await backend.decrypt(K.ed, good.ciphertext, good.iv, good.tag, aad)).equals(pt)).to.equal(true);
      });

      it('does not decrypt under another key', async () => {
        await expectXks(backend.decrypt(K.ed2, good.ciphertext, good.iv, good.tag, aad), 'InvalidCiphertextException');
      });
    });

    describe('standard GCM, cross-checked with node:crypto on a key of known value', () => {
      // Keys made by createKey never leave the HSM, so this test imports one whose value it knows
      // (sensitive, non-extractable) through a second pkcs11js instance.
      const known = randomBytes(32);
      const label = 'k-known-value';
      before(() => {
        const other = new OtherModuleUser(tk.module);
        try {
          other.withSession(tk.tokenLabel, (s) =>
            other.p.C_CreateObject(s, [
              { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
              { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
              { type: pkcs11js.CKA_TOKEN, value: true },
              { type: pkcs11js.CKA_PRIVATE, value: true },
              { type: pkcs11js.CKA_SENSITIVE, value: true },
              { type: pkcs11js.CKA_EXTRACTABLE, value: false },
              { type: pkcs11js.CKA_LABEL, value: label },
              { type: pkcs11js.CKA_VALUE, value: known },
              { type: pkcs11js.CKA_ENCRYPT, value: true },
              { type: pkcs11js.CKA_DECRYPT, value: true },
            ]),
          );
        } finally {
          other.p.close(); // dlclose only: the module stays initialised for the backend
        }
      });

      it('what the HSM encrypts, node:crypto decrypts', async () => {
        const pt = randomBytes(1000);
        const aad = randomBytes(300);
        const r = await backend.encrypt(label, pt, aad);
        const d = createDecipheriv('aes-256-gcm', known, r.iv);
        d.setAAD(aad);
        d.setAuthTag(r.tag);
        expect(Buffer.concat([d.update(r.ciphertext), d.final()]).equals(pt)).to.equal(true);
      });

      for (const ivLen of [12, 16]) {
        it(`what node:crypto encrypts with a ${ivLen}-byte IV, the HSM decrypts`, async () => {
          const pt = randomBytes(777);
          const aad = randomBytes(50);
          const iv = randomBytes(ivLen);
          const c = createCipheriv('aes-256-gcm', known, iv);
          c.setAAD(aad);
          const ct = Buffer.concat([c.update(pt), c.final()]);
          expect((await backend.decrypt(label, ct, iv, c.getAuthTag(), aad)).equals(pt)).to.equal(true);
        });
      }
    });
  });

  describe('keys and usage', () => {
    it('describeKey reports keySpec and keyUsage from the HSM attributes', async () => {
      const cases: [string, string, string[]][] = [
        [K.ed, 'AES_256', ['ENCRYPT', 'DECRYPT']],
        [K.e, 'AES_256', ['ENCRYPT']],
        [K.d, 'AES_256', ['DECRYPT']],
        [K.none, 'AES_256', []],
        [K.aes128, 'AES_128', ['ENCRYPT', 'DECRYPT']],
        [K.aes192, 'AES_192', ['ENCRYPT', 'DECRYPT']],
      ];
      for (const [label, keySpec, keyUsage] of cases) {
        expect(await backend.describeKey(label), label).to.deep.equal({ label, keySpec, keyUsage });
      }
    });

    it('an encrypt-only key encrypts but cannot decrypt', async () => {
      const r = await backend.encrypt(K.e, Buffer.from('x'), Buffer.from('a'));
      expect(r.ciphertext).to.have.length(1);
      await expectXks(backend.decrypt(K.e, r.ciphertext, r.iv, r.tag, Buffer.from('a')), 'InvalidKeyUsageException');
    });

    it('a decrypt-only key cannot encrypt, but does try to decrypt', async () => {
      await expectXks(backend.encrypt(K.d, Buffer.from('x'), Buffer.from('a')), 'InvalidKeyUsageException');
      // Passes the usage check and reaches the HSM, which rejects the (random) ciphertext.
      await expectXks(backend.decrypt(K.d, randomBytes(10), randomBytes(12), randomBytes(16), Buffer.from('a')), 'InvalidCiphertextException');
    });

    it("a 'none' key can do neither", async () => {
      await expectXks(backend.encrypt(K.none, Buffer.from('x'), Buffer.from('a')), 'InvalidKeyUsageException');
      await expectXks(backend.decrypt(K.none, randomBytes(10), randomBytes(12), randomBytes(16), Buffer.from('a')), 'InvalidKeyUsageException');
    });

    it('an AES-128 (or 192) key is refused for encrypt and decrypt', async () => {
      for (const label of [K.aes128, K.aes192]) {
        const e = await expectXks(backend.encrypt(label, Buffer.from('x'), Buffer.from('a')), 'InvalidKeyUsageException');
        expect(e.detail).to.match(/AES_1(28|92)/);
        await expectXks(backend.decrypt(label, randomBytes(10), randomBytes(12), randomBytes(16), Buffer.from('a')), 'InvalidKeyUsageException');
      }
    });

    it('an unknown label is KeyNotFoundException everywhere', async () => {
      await expectXks(backend.describeKey('no-such-key'), 'KeyNotFoundException');
      await expectXks(backend.encrypt('no-such-key', Buffer.from('x'), Buffer.from('a')), 'KeyNotFoundException');
      await expectXks(backend.decrypt('no-such-key', randomBytes(10), randomBytes(12), randomBytes(16), Buffer.from('a')), 'KeyNotFoundException');
    });

    it('describeKey re-reads the attributes: a key changed in the HSM shows (and is then enforced)', async () => {
      expect((await backend.describeKey(K.mutable)).keyUsage).to.deep.equal(['ENCRYPT', 'DECRYPT']);
      await backend.encrypt(K.mutable, Buffer.from('x'), Buffer.from('a')); // now cached
      const other = new OtherModuleUser(tk.module);
      try {
        other.withSession(tk.tokenLabel, (s) => {
          const [h] = other.findKeys(K.mutable, s);
          other.p.C_SetAttributeValue(s, h!, [{ type: pkcs11js.CKA_ENCRYPT, value: false }]);
        });
      } finally {
        other.p.close();
      }
      expect((await backend.describeKey(K.mutable)).keyUsage).to.deep.equal(['DECRYPT']);
      await expectXks(backend.encrypt(K.mutable, Buffer.from('x'), Buffer.from('a')), 'InvalidKeyUsageException');
    });

    it('a key deleted and re-created under the same label is found again (stale handle refreshed)', async () => {
      const before = await backend.encrypt(K.rotate, Buffer.from('old key'), Buffer.from('a')); // handle cached
      const other = new OtherModuleUser(tk.module);
      try {
        other.withSession(tk.tokenLabel, (s) => other.p.C_DestroyObject(s, other.findKeys(K.rotate, s)[0]!));
      } finally {
        other.p.close();
      }
      await expectXks(backend.encrypt(K.rotate, Buffer.from('x'), Buffer.from('a')), 'KeyNotFoundException');
      await createKey(tk.hsmConfig, tk.pin, { label: K.rotate, usage: 'encrypt-decrypt' });
      const pt = Buffer.from('new key');
      const r = await backend.encrypt(K.rotate, pt, Buffer.from('a'));
      expect((await backend.decrypt(K.rotate, r.ciphertext, r.iv, r.tag, Buffer.from('a'))).equals(pt)).to.equal(true);
      // The old ciphertext belongs to the destroyed key.
      await expectXks(backend.decrypt(K.rotate, before.ciphertext, before.iv, before.tag, Buffer.from('a')), 'InvalidCiphertextException');
    });

    it('two keys with one label are refused as ambiguous, not guessed', async () => {
      const label = 'k-twice';
      const other = new OtherModuleUser(tk.module);
      try {
        other.withSession(tk.tokenLabel, (s) => {
          for (let i = 0; i < 2; i++) {
            other.p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
              { type: pkcs11js.CKA_TOKEN, value: true },
              { type: pkcs11js.CKA_PRIVATE, value: true },
              { type: pkcs11js.CKA_LABEL, value: label },
              { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
            ]);
          }
        });
      } finally {
        other.p.close();
      }
      const e = await expectXks(backend.encrypt(label, Buffer.from('x'), Buffer.from('a')), 'InternalException');
      expect(e.detail).to.equal('ambiguous label');
      await expectXks(backend.describeKey(label), 'InternalException');
    });

    it('listKeys lists every secret key with the KeyInfo the backend reports', async () => {
      const keys = await listKeys(tk.hsmConfig, tk.pin);
      const byLabel = new Map(keys.map((k) => [k.label, k]));
      for (const label of [K.ed, K.e, K.d, K.none, K.aes128]) {
        expect(byLabel.get(label), label).to.deep.equal(await backend.describeKey(label));
      }
      expect(byLabel.get(K.none)!.keyUsage).to.deep.equal([]);
      const labels = keys.map((k) => k.label);
      expect(labels).to.deep.equal([...labels].sort(), 'sorted by label');
    });

    it('createKey refuses a label that is already taken', async () => {
      const e = await errorOf(createKey(tk.hsmConfig, tk.pin, { label: K.ed, usage: 'encrypt-decrypt' }));
      expect(e.message).to.match(/already exists/);
      const keys = await listKeys(tk.hsmConfig, tk.pin);
      expect(keys.filter((k) => k.label === K.ed)).to.have.length(1);
    });
  });

  describe('start-up failures: a clear message, never the PIN', () => {
    it('a wrong PIN', async () => {
      const wrongPin = 'wrong-' + randomBytes(8).toString('hex');
      const e = await errorOf(openPkcs11Backend(pinTk.hsmConfig, wrongPin, cap.log));
      expect(e).to.not.be.instanceOf(XksError);
      expect(e.message).to.match(/PIN is incorrect/);
      expect(e.message).to.include(pinTk.tokenLabel);
      expect(e.message).to.not.include(wrongPin);
      expect(e.message).to.not.include(pinTk.pin);
      expect(cap.lines.join('\n')).to.not.include(wrongPin);
    });

    it('the right PIN on that token opens (so the failure above was the PIN)', async () => {
      const b = await openPkcs11Backend(pinTk.hsmConfig, pinTk.pin, cap.log);
      expect(b.tokenInfo().label).to.equal(pinTk.tokenLabel);
      await b.close();
    });

    it('key-admin with a wrong PIN', async () => {
      const wrongPin = 'wrong-' + randomBytes(8).toString('hex');
      const e = await errorOf(listKeys(pinTk.hsmConfig, wrongPin));
      expect(e.message).to.match(/PIN is incorrect/);
      expect(e.message).to.not.include(wrongPin);
    });

    it('a token label that does not exist: the labels found are listed', async () => {
      const e = await errorOf(openPkcs11Backend({ ...tk.hsmConfig, tokenLabel: 'no-such-token' }, tk.pin, cap.log));
      expect(e.message).to.match(/No token labelled "no-such-token"/);
      expect(e.message).to.include(`"${tk.tokenLabel}"`);
      expect(e.message).to.include(`"${pinTk.tokenLabel}"`);
      expect(e.message).to.not.include(tk.pin);
    });

    it('a module that cannot be loaded: the path is named', async () => {
      const e = await errorOf(openPkcs11Backend({ ...tk.hsmConfig, module: '/nonexistent/libnothing.so' }, tk.pin, cap.log));
      expect(e.message).to.match(/Cannot load the PKCS#11 module "\/nonexistent\/libnothing\.so"/);
      expect(e.message).to.not.include(tk.pin);
    });

    it('a failed open leaves the running backend alone', async () => {
      const pt = Buffer.from('still fine');
      const r = await backend.encrypt(K.ed, pt, Buffer.from('a'));
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('a'))).equals(pt)).to.equal(true);
    });
  });

  describe('recovery without a restart', () => {
    const countLines = (lines: string[], needle: string) => lines.filter((l) => l.includes(needle)).length;

    /** Fault (a): C_CloseAllSessions on the token from another pkcs11js instance. */
    function closeAllSessions(): void {
      const other = new OtherModuleUser(tk.module);
      try {
        other.p.C_CloseAllSessions(other.slot(tk.tokenLabel));
      } finally {
        other.p.close();
      }
    }

    /** Fault (b): C_Finalize from another pkcs11js instance; checks that it took effect. */
    function finalizeModule(): void {
      const other = new OtherModuleUser(tk.module);
      try {
        other.p.C_Finalize();
        let code: number | undefined;
        try {
          other.p.C_GetSlotList(true);
        } catch (e) {
          code = (e as { code?: number }).code;
        }
        expect(code).to.equal(pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED, 'the fault was injected');
      } finally {
        other.p.close();
      }
    }

    it('(a) every session on the token closed under the backend (C_CloseAllSessions)', async () => {
      const pt = Buffer.from(`${CANARY} before close-all`);
      const aad = Buffer.from('aad');
      const old = await backend.encrypt(K.ed, pt, aad);
      expect(backend.poolStats().size).to.be.greaterThan(0);

      const drops = countLines(cap.lines, 'CKR_SESSION_HANDLE_INVALID');
      closeAllSessions();

      const r = await backend.encrypt(K.ed, pt, aad);
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
      expect((await backend.decrypt(K.ed, old.ciphertext, old.iv, old.tag, aad)).equals(pt)).to.equal(true);
      // The fault really hit the backend (SoftHSM2 does not report session counts to check instead).
      expect(countLines(cap.lines, 'CKR_SESSION_HANDLE_INVALID')).to.equal(drops + 1);
      expect(cap.lines.some((l) => l.includes('CKR_SESSION_HANDLE_INVALID') && l.includes('"action":"drop"') && l.includes('"retry":true'))).to.equal(true);
    });

    it('(a) ... also with many calls in flight at once', async () => {
      await Promise.all(Array.from({ length: 8 }, () => backend.encrypt(K.ed, Buffer.from('warm'), Buffer.from('a'))));
      const drops = countLines(cap.lines, 'CKR_SESSION_HANDLE_INVALID');
      closeAllSessions();
      const pts = Array.from({ length: 20 }, (_, i) => Buffer.from(`parallel ${i}`));
      const rs = await Promise.all(pts.map((pt) => backend.encrypt(K.ed, pt, Buffer.from('a'))));
      const back = await Promise.all(rs.map((r) => backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('a'))));
      back.forEach((b, i) => expect(b.equals(pts[i]!)).to.equal(true));
      expect(countLines(cap.lines, 'CKR_SESSION_HANDLE_INVALID')).to.be.greaterThan(drops);
    });

    it('(b) the module finalised under the backend (C_Finalize): re-initialised on the next call', async () => {
      const pt = Buffer.from(`${CANARY} before finalize`);
      const aad = Buffer.from('aad');
      const old = await backend.encrypt(K.ed, pt, aad);

      const reinits = countLines(cap.lines, 're-initialised');
      finalizeModule();

      const r = await backend.encrypt(K.ed, pt, aad);
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
      expect((await backend.decrypt(K.ed, old.ciphertext, old.iv, old.tag, aad)).equals(pt)).to.equal(true);
      expect(await backend.describeKey(K.e)).to.deep.equal({ label: K.e, keySpec: 'AES_256', keyUsage: ['ENCRYPT'] });
      expect(countLines(cap.lines, 're-initialised')).to.equal(reinits + 1);
      expect(cap.lines.some((l) => l.includes('CKR_CRYPTOKI_NOT_INITIALIZED') && l.includes('"action":"reinit"'))).to.equal(true);
    });

    it('(b) ... with many calls in flight at once', async () => {
      await Promise.all(Array.from({ length: 8 }, () => backend.encrypt(K.ed, Buffer.from('warm'), Buffer.from('a'))));
      const reinits = countLines(cap.lines, 're-initialised');
      finalizeModule();
      const pts = Array.from({ length: 20 }, (_, i) => Buffer.from(`parallel after finalize ${i}`));
      const rs = await Promise.all(pts.map((pt) => backend.encrypt(K.ed, pt, Buffer.from('a'))));
      const back = await Promise.all(rs.map((r) => backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('a'))));
      back.forEach((b, i) => expect(b.equals(pts[i]!)).to.equal(true));
      expect(countLines(cap.lines, 're-initialised')).to.equal(reinits + 1, 'one re-initialisation serves all callers');
    });

    it('(b) ... twice in a row, each time recovered', async () => {
      for (let i = 0; i < 2; i++) {
        const reinits = countLines(cap.lines, 're-initialised');
        finalizeModule();
        const pt = Buffer.from(`after finalisation ${i}`);
        const r = await backend.encrypt(K.ed, pt, Buffer.from('a'));
        expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('a'))).equals(pt)).to.equal(true);
        expect(countLines(cap.lines, 're-initialised')).to.equal(reinits + 1);
      }
    });
  });

  describe('pool, token info, close', () => {
    it('stays within the pool size under load, and returns every session', async () => {
      const size = tk.hsmConfig.pool.size;
      const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => backend.encrypt(K.ed, Buffer.from(`load ${i}`), Buffer.from('a'))));
      expect(rs).to.have.length(50);
      const s = backend.poolStats();
      expect(s.size).to.be.within(1, size);
      expect(s.inUse).to.equal(0);
      expect(s.waiters).to.equal(0);
    });

    it('tokenInfo comes from C_GetTokenInfo, trimmed', () => {
      const t = backend.tokenInfo();
      expect(t.label).to.equal(tk.tokenLabel);
      expect(t.manufacturer).to.equal('SoftHSM project');
      expect(t.model).to.match(/^SoftHSM v2 \(hardware \d+\.\d+, firmware \d+\.\d+\)$/);
      expect(t.serialNumber).to.match(/^\S+$/);
    });

    it('a second backend on the same module can come and go without disturbing the first', async () => {
      const b2 = await openPkcs11Backend(tk.hsmConfig, tk.pin, cap.log);
      const r = await b2.encrypt(K.ed, Buffer.from('from b2'), Buffer.from('a'));
      await b2.close();
      // Keys are the same: what b2 encrypted, backend decrypts; and backend still works.
      expect((await backend.decrypt(K.ed, r.ciphertext, r.iv, r.tag, Buffer.from('a'))).toString()).to.equal('from b2');
    });

    it('no log line contains the PIN, the canary plaintext/AAD or key material', () => {
      const all = cap.lines.join('\n');
      expect(cap.lines.length).to.be.greaterThan(0);
      expect(all).to.not.include(tk.pin);
      expect(all).to.not.include(pinTk.pin);
      expect(all).to.not.include(CANARY);
    });

    it('close() closes the sessions and finalises the module; later calls fail cleanly', async () => {
      await backend.close();
      await expectXks(backend.encrypt(K.ed, Buffer.from('x'), Buffer.from('a')), 'InternalException');
      // The backend was the module's last user in this process: it must have been finalised, so
      // a fresh C_Initialize succeeds instead of answering CKR_CRYPTOKI_ALREADY_INITIALIZED.
      const p = new pkcs11js.PKCS11();
      p.load(tk.module);
      try {
        let result = 'CKR_OK';
        try {
          p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
        } catch (e) {
          result = (e as Error).message;
        }
        expect(result).to.equal('CKR_OK');
        p.C_Finalize();
      } finally {
        p.close();
      }
      await backend.close(); // idempotent
    });
  });
});
