import { expect } from 'chai';
import { XksError, type ErrorName } from '../../../src/errors/xks-error';
import { parseDecrypt, parseEncrypt, parseJsonBody, parseRequestMetadata, type XksApi } from '../../../src/xks/requests';

const limits = { maxPlaintextBytes: 4300, maxAadBytes: 8192 };
const b64 = (n: number, fill = 7) => Buffer.alloc(n, fill).toString('base64');

function expectError(f: () => unknown, name: ErrorName, msg?: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(e).to.be.instanceOf(XksError);
    expect((e as XksError).errorName).to.equal(name);
    if (msg) expect((e as XksError).message).to.match(msg);
    return;
  }
  expect.fail(`expected ${name}`);
}

const md = { kmsRequestId: 'r', kmsOperation: 'Encrypt', awsPrincipalArn: 'arn:aws:iam::1:user/a', kmsKeyArn: 'arn:aws:kms:us-east-1:1:key/x' };

describe('request parsing', () => {
  it('rejects a body that is not a JSON object', () => {
    expectError(() => parseJsonBody(Buffer.from('{')), 'ValidationException', /not valid JSON/);
    expectError(() => parseJsonBody(Buffer.from('[1]')), 'ValidationException', /JSON object/);
    expectError(() => parseJsonBody(Buffer.from('null')), 'ValidationException');
  });

  const required: [XksApi, string[]][] = [
    ['GetHealthStatus', ['kmsRequestId', 'kmsOperation']],
    ['GetKeyMetadata', ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn']],
    ['Encrypt', ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn', 'kmsKeyArn']],
    ['Decrypt', ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn', 'kmsKeyArn']],
  ];
  for (const [api, fields] of required) {
    it(`${api}: requires ${fields.join(', ')} in requestMetadata and nothing else`, () => {
      const all = { ...md };
      expect(parseRequestMetadata({ requestMetadata: all }, api).kmsRequestId).to.equal('r');
      for (const f of fields) {
        const without = { ...all } as Record<string, unknown>;
        delete without[f];
        expectError(() => parseRequestMetadata({ requestMetadata: without }, api), 'ValidationException', new RegExp(`requestMetadata.${f} is required`));
      }
      const minimal = Object.fromEntries(fields.map((f) => [f, 'x']));
      expect(() => parseRequestMetadata({ requestMetadata: minimal }, api)).not.to.throw();
    });
  }

  it('accepts unknown kmsOperation values, opaque kmsRequestIds and unknown fields', () => {
    const r = parseRequestMetadata({ requestMetadata: { ...md, kmsOperation: 'BulkEncryptFromTheFuture', kmsRequestId: 'not a uuid at all', newField: { x: 1 } }, other: true }, 'Encrypt');
    expect(r.kmsOperation).to.equal('BulkEncryptFromTheFuture');
  });

  it('rejects wrong types with the field named', () => {
    expectError(() => parseRequestMetadata({}, 'Encrypt'), 'ValidationException', /requestMetadata is required/);
    expectError(() => parseRequestMetadata({ requestMetadata: 'x' }, 'Encrypt'), 'ValidationException', /requestMetadata must be an object/);
    expectError(() => parseRequestMetadata({ requestMetadata: { ...md, kmsViaService: 5 } }, 'Encrypt'), 'ValidationException', /requestMetadata.kmsViaService must be a string/);
  });

  describe('Encrypt', () => {
    const base = { plaintext: b64(32), encryptionAlgorithm: 'AES_GCM' };
    it('accepts 4300 bytes of plaintext and 8192 bytes of AAD; refuses more as UnsupportedOperationException', () => {
      const ok = parseEncrypt({ ...base, plaintext: b64(4300), additionalAuthenticatedData: b64(8192) }, limits);
      expect(ok.plaintext.length).to.equal(4300);
      expect(ok.aad!.length).to.equal(8192);
      expectError(() => parseEncrypt({ ...base, plaintext: b64(4301) }, limits), 'UnsupportedOperationException');
      expectError(() => parseEncrypt({ ...base, additionalAuthenticatedData: b64(8193) }, limits), 'UnsupportedOperationException');
    });
    it('checks the algorithm fields', () => {
      expectError(() => parseEncrypt({ plaintext: b64(1) }, limits), 'ValidationException', /encryptionAlgorithm is required/);
      expectError(() => parseEncrypt({ ...base, encryptionAlgorithm: 'AES_CBC' }, limits), 'UnsupportedOperationException');
      expectError(() => parseEncrypt({ ...base, ciphertextDataIntegrityValueAlgorithm: 'MD5' }, limits), 'UnsupportedOperationException');
      expect(parseEncrypt({ ...base, ciphertextDataIntegrityValueAlgorithm: 'SHA_256' }, limits).cdivRequested).to.equal(true);
      expect(parseEncrypt(base, limits).cdivRequested).to.equal(false);
    });
    it('decodes Base64 strictly', () => {
      for (const bad of ['SGVsbG8', 'SGVs*G8=', 'SGVsbG8=\n', '====', 'SG=sbG8=']) {
        expectError(() => parseEncrypt({ ...base, plaintext: bad }, limits), 'ValidationException', /plaintext is not valid Base64/);
      }
      expectError(() => parseEncrypt({ ...base, plaintext: '' }, limits), 'ValidationException', /must not be empty/);
      expectError(() => parseEncrypt({ ...base, plaintext: 12 }, limits), 'ValidationException', /plaintext must be a string/);
      expectError(() => parseEncrypt({ ...base, additionalAuthenticatedData: 'a' }, limits), 'ValidationException', /additionalAuthenticatedData/);
    });
  });

  describe('Decrypt', () => {
    const base = { ciphertext: b64(32), initializationVector: b64(12), authenticationTag: b64(16), encryptionAlgorithm: 'AES_GCM' };
    it('accepts 12- and 16-byte IVs, metadata up to 20 bytes, 4300-byte ciphertext and 8192-byte AAD', () => {
      expect(parseDecrypt(base, limits).iv.length).to.equal(12);
      expect(parseDecrypt({ ...base, initializationVector: b64(16) }, limits).iv.length).to.equal(16);
      const r = parseDecrypt({ ...base, ciphertext: b64(4300), additionalAuthenticatedData: b64(8192), ciphertextMetadata: b64(20) }, limits);
      expect([r.ciphertext.length, r.aad!.length, r.ciphertextMetadata!.length]).to.deep.equal([4300, 8192, 20]);
    });
    const bad: [string, Record<string, unknown>, ErrorName][] = [
      ['an 11-byte IV', { initializationVector: b64(11) }, 'InvalidCiphertextException'],
      ['a 13-byte IV', { initializationVector: b64(13) }, 'InvalidCiphertextException'],
      ['a 15-byte tag', { authenticationTag: b64(15) }, 'InvalidCiphertextException'],
      ['a missing tag', { authenticationTag: undefined }, 'InvalidCiphertextException'],
      ['a missing IV', { initializationVector: undefined }, 'InvalidCiphertextException'],
      ['a missing ciphertext', { ciphertext: undefined }, 'InvalidCiphertextException'],
      ['an empty ciphertext', { ciphertext: '' }, 'InvalidCiphertextException'],
      ['non-Base64 ciphertext', { ciphertext: '!!!!' }, 'InvalidCiphertextException'],
      ['a numeric ciphertext', { ciphertext: 5 }, 'ValidationException'],
      ['21 bytes of metadata', { ciphertextMetadata: b64(21) }, 'ValidationException'],
      ['4301 bytes of ciphertext', { ciphertext: b64(4301) }, 'UnsupportedOperationException'],
      ['another algorithm', { encryptionAlgorithm: 'AES_CTR' }, 'UnsupportedOperationException'],
    ];
    for (const [name, over, err] of bad) {
      it(`answers ${err} for ${name}`, () => expectError(() => parseDecrypt({ ...base, ...over }, limits), err));
    }
  });
});
