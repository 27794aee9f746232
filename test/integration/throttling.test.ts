/** ThrottlingException end to end: a key store's own quota, and shedding beyond capacity. */
import { expect } from 'chai';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

describe('throttling', () => {
  let token: TestToken;
  let h: Harness;
  let credQ: Credential;
  let credFree: Credential;
  const health = () => ({ requestMetadata: { kmsRequestId: 'q', kmsOperation: 'KmsHealthCheck' } });

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    credQ = writeCredential(path.join(token.dir, 'q'));
    credFree = writeCredential(path.join(token.dir, 'free'));
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [
        // 0.1 per second: the burst of 3 is all a test run can use.
        { name: 'limited', pathPrefix: '/limited', credentialsDir: path.join(token.dir, 'q'), quota: { requestsPerSecond: 0.1, burst: 3 } },
        { name: 'free', pathPrefix: '/free', credentialsDir: path.join(token.dir, 'free') },
      ],
    });
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
    const r = await xksCall(h, '/free/kms/xks/v1/health', health(), { cred: { ...credFree, secret: 'A'.repeat(44) } });
    expect(r.status).to.equal(401);
  });

  it('over capacity, requests are shed with 429 before any SigV4 or HSM work, and served again after', async () => {
    h.proxy.overload.setLagForTest(500);
    let r;
    try {
      r = await xksCall(h, '/free/kms/xks/v1/health', health(), { cred: credFree });
    } finally {
      h.proxy.overload.setLagForTest(0);
    }
    expect(r.status).to.equal(429);
    expect(r.json.errorName).to.equal('ThrottlingException');
    expect(r.json.errorMessage).to.match(/over capacity/);
    const line = h.requestLog().trim().split('\n').map((l) => JSON.parse(l)).reverse().find((l) => l.errorName === 'ThrottlingException' && l.keyStore === 'free');
    expect(line.reason).to.match(/overload: overloaded \(event loop 500 ms late, max \d+\)/);
    expect((await xksCall(h, '/free/kms/xks/v1/health', health(), { cred: credFree })).status).to.equal(200);
  });
});
