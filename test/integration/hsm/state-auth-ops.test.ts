/**
 * The HSM side of the control state's authentication, against a REAL SoftHSM2 token: the MAC
 * key `keys create --type hmac` makes, HMAC-SHA256 computed and checked inside the token, refusal
 * of keys that could leave it, and the private data object that holds the highest generation.
 */
import { expect } from 'chai';
import { createHmac } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { withTokenSession } from '../../../src/hsm/pkcs11-token';
import { createSilentLogger } from '../../../src/log/logger';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectXks, flip } from '../../helpers/xks-expect';

describe('HSM operations for the control state (SoftHSM2)', () => {
  let token: TestToken;
  let hsm: Pkcs11Backend;
  const data = Buffer.from('{"generation":7,"body":{"blocks":[]}}');

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'mac', type: 'hmac', usage: 'none' });
    await createKey(token.hsmConfig, token.pin, { label: 'aes', usage: 'encrypt-decrypt' });
    // A generic secret key that can be read out: what the proxy must refuse as a MAC key.
    await withTokenSession(token.hsmConfig, token.pin, (p, s) => {
      p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_VERIFY, value: true },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_LABEL, value: 'readable' },
      ]);
    });
    hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
  });
  after(async () => {
    await hsm?.close();
    token?.cleanup();
  });

  it('keys create --type hmac makes a 256-bit generic secret that only signs and verifies and never leaves the token', async () => {
    const attrs = await withTokenSession(token.hsmConfig, token.pin, (p, s) => {
      p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: 'mac' }]);
      const [h] = p.C_FindObjects(s, 1);
      p.C_FindObjectsFinal(s);
      const types = [pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_SIGN, pkcs11js.CKA_VERIFY, pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT, pkcs11js.CKA_WRAP, pkcs11js.CKA_DERIVE, pkcs11js.CKA_TOKEN, pkcs11js.CKA_PRIVATE];
      return Object.fromEntries(p.C_GetAttributeValue(s, h!, types.map((type) => ({ type }))).map((a) => [a.type, a.value[0] !== 0]));
    });
    expect(attrs).to.deep.equal({
      [pkcs11js.CKA_SENSITIVE]: true,
      [pkcs11js.CKA_EXTRACTABLE]: false,
      [pkcs11js.CKA_SIGN]: true,
      [pkcs11js.CKA_VERIFY]: true,
      [pkcs11js.CKA_ENCRYPT]: false,
      [pkcs11js.CKA_DECRYPT]: false,
      [pkcs11js.CKA_WRAP]: false,
      [pkcs11js.CKA_DERIVE]: false,
      [pkcs11js.CKA_TOKEN]: true,
      [pkcs11js.CKA_PRIVATE]: true,
    });
  });

  it('a MAC verifies for its data only; a flipped bit, other data or a short MAC does not', async () => {
    const mac = await hsm.hmacSign('mac', data);
    expect(mac.length).to.equal(32);
    expect(await hsm.hmacSign('mac', data)).to.deep.equal(mac);
    expect(await hsm.hmacVerify('mac', data, mac)).to.equal(true);
    expect(await hsm.hmacVerify('mac', data, flip(mac, 31))).to.equal(false);
    expect(await hsm.hmacVerify('mac', flip(data, 3), mac)).to.equal(false);
    expect(await hsm.hmacVerify('mac', data, mac.subarray(0, 16))).to.equal(false);
    // Not a MAC anyone can compute without the token (e.g. with an all-zero key).
    expect(mac).to.not.deep.equal(createHmac('sha256', Buffer.alloc(32)).update(data).digest());
  });

  it('refuses a missing key, an AES key and a key that can be read out of the token', async () => {
    await expectXks(hsm.hmacSign('absent', data), 'KeyNotFoundException');
    const aes = await expectXks(hsm.hmacSign('aes', data), 'InvalidKeyUsageException');
    expect(aes.detail).to.match(/not an HMAC/);
    const readable = await expectXks(hsm.hmacVerify('readable', data, Buffer.alloc(32)), 'InvalidKeyUsageException');
    expect(readable.detail).to.match(/sensitive and not extractable/);
  });

  it('a data object is created, replaced (one object left), and read back', async () => {
    expect(await hsm.readDataObjects('record')).to.deep.equal([]);
    await hsm.writeDataObject('record', Buffer.from('one'));
    await hsm.writeDataObject('record', Buffer.from('two'));
    expect((await hsm.readDataObjects('record')).map(String)).to.deep.equal(['two']);
  });
});
