/** ThrottlingException end to end: a key store's own quota, and shedding beyond capacity. */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { openPkcs11Backend } from '../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../src/log/logger';
import { CountingBackend } from './control/counting-backend';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

describe('throttling', () => {
  let token: TestToken;
  let h: Harness;
  let credQ: Credential;
  let credFree: Credential;
  let credGuarded: Credential;
  let hsm: CountingBackend;
  const health = () => ({ requestMetadata: { kmsRequestId: 'q', kmsOperation: 'KmsHealthCheck' } });

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
    credQ = writeCredential(path.join(token.dir, 'q'));
    credFree = writeCredential(path.join(token.dir, 'free'));
    credGuarded = writeCredential(path.join(token.dir, 'guarded'));
    // The real token, counting the customer-key operations that reach it.
    hsm = new CountingBackend(await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger()));
    h = await startHarness(
      {
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
        keyStores: [
          // 0.1 per second: the burst is all a test run can use.
          { name: 'limited', pathPrefix: '/limited', credentialsDir: path.join(token.dir, 'q'), quota: { requestsPerSecond: 0.1, burst: 3 } },
          { name: 'guarded', pathPrefix: '/guarded', credentialsDir: path.join(token.dir, 'guarded'), quota: { requestsPerSecond: 0.1, burst: 2 } },
          { name: 'free', pathPrefix: '/free', credentialsDir: path.join(token.dir, 'free'), keys: [{ externalKeyId: 'k1' }] },
        ],
      },
      { hsm },
    );
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  it("a key store's quota: the burst passes, the next request is 429 ThrottlingException, other stores are unaffected", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await xksCall(h, '/limited/kms/xks/v1/health', health(), { cred: credQ })).status);
    expect(statuses).to.deep.equal([200, 200, 200]);
    const r = await xksCall(h, '/limited/kms/xks/v1/health', health(), { cred: credQ });
    expect(r.status).to.equal(429);
    expect(r.json.errorName).to.equal('ThrottlingException');
    expect((await xksCall(h, '/free/kms/xks/v1/health', health(), { cred: credFree })).status).to.equal(200);
  });

  it('unauthenticated requests do not use up a quota', async () => {
    // Far more unauthenticated requests than the quota's burst of 2: each is 401, none 429.
    const forged = { ...credGuarded, secret: 'A'.repeat(44) };
    const flood = await Promise.all(Array.from({ length: 10 }, () => xksCall(h, '/guarded/kms/xks/v1/health', health(), { cred: forged })));
    expect(flood.map((r) => r.status)).to.deep.equal(Array(10).fill(401));
    // The whole burst is still there for the credential holder, and then the quota bites.
    const served = [];
    for (let i = 0; i < 3; i++) served.push((await xksCall(h, '/guarded/kms/xks/v1/health', health(), { cred: credGuarded })).status);
    expect(served).to.deep.equal([200, 200, 429]);
  });

  it('over capacity, requests are shed with 429 before any SigV4 or HSM work, and served again after', async () => {
    const encrypt = () => ({
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() },
      plaintext: Buffer.from('hello').toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    const url = '/free/kms/xks/v1/keys/k1/encrypt';
    // A signature that cannot verify: 429 rather than 401 shows the refusal came before SigV4.
    const forged = { ...credFree, secret: 'A'.repeat(44) };
    const before = hsm.started;
    h.proxy.overload.setLagForTest(5000); // over three times the harness's maximum lag (1000 ms): all are shed
    let r;
    try {
      r = await xksCall(h, url, encrypt(), { cred: forged });
    } finally {
      h.proxy.overload.setLagForTest(0);
    }
    expect(r.status, r.text).to.equal(429);
    expect(r.json.errorName).to.equal('ThrottlingException');
    expect(r.json.errorMessage).to.match(/over capacity/);
    expect(hsm.started, 'HSM operations').to.equal(before);
    const line = h.requestLog().trim().split('\n').map((l) => JSON.parse(l)).reverse().find((l) => l.errorName === 'ThrottlingException' && l.keyStore === 'free');
    expect(line.reason).to.match(/overload: overloaded \(event loop 5000 ms late, max \d+\)/);
    // Request-log lines carry a level like the application log's (4xx: warn).
    expect(line).to.include({ level: 'warn', message: 'xks request' });
    expect(line.reasonCode).to.equal('overload.lag');
    expect(line.accessKeyId).to.equal(undefined);
    // Not shed: the same forged request meets SigV4 (401), and a signed one reaches the HSM.
    expect((await xksCall(h, url, encrypt(), { cred: forged })).status).to.equal(401);
    expect(hsm.started, 'HSM operations').to.equal(before);
    expect((await xksCall(h, url, encrypt(), { cred: credFree })).status).to.equal(200);
    expect(hsm.started, 'HSM operations').to.equal(before + 1);
  });
});
