/**
 * The conformance checker against our own proxy: every case passes; with a wrong credential the
 * authenticated cases fail and say why.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { CASES } from '../../src/checker/cases';
import { formatReport, runChecks } from '../../src/checker/run';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

describe('xks-proxy check (conformance checker)', () => {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;

  // Rule 2 of softhsm-token.ts: every token before the first backend opens.
  let otherToken: TestToken;
  before(async () => {
    token = createTestToken();
    otherToken = createTestToken();
    await createKey(otherToken.hsmConfig, otherToken.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(otherToken.hsmConfig, otherToken.pin, { label: 'check-key', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'check-key', usage: 'encrypt-decrypt' });
    const dir = path.join(token.dir, 'creds');
    cred = writeCredential(dir);
    h = await startHarness({ hsm: { ...token.hsmConfig, pin: { file: token.pinFile } }, keyStores: [{ name: 'c', pathPrefix: '/c', credentialsDir: dir, keys: [{ externalKeyId: 'check-key' }] }] });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  const opts = () => ({ baseUrl: `https://localhost:${h.proxy.port}/c/kms/xks/v1`, keyId: 'check-key', accessKeyId: cred.accessKeyId, secret: cred.secret, region: 'eu-west-1', ca: fs.readFileSync(h.certFile) });

  it('passes every case against this proxy, over TLS 1.3, within the 250 ms budget', async () => {
    const r = await runChecks(opts());
    expect(r.cases.filter((c) => !c.pass), formatReport(r)).to.deep.equal([]);
    expect(r.passed).to.equal(CASES.length);
    expect(r.tls).to.include({ protocol: 'TLSv1.3' });
    expect(r.withinBudget).to.equal(true);
    expect(formatReport(r)).to.include(`${CASES.length} passed, 0 failed`);
  });

  it('reports failures with a reason when the credential is wrong', async () => {
    const r = await runChecks({ ...opts(), secret: 'A'.repeat(44) });
    const health = r.cases.find((c) => c.name.startsWith('GetHealthStatus'))!;
    expect(health.pass).to.equal(false);
    expect(health.detail).to.match(/HTTP 401/);
    expect(r.failed).to.be.greaterThan(0);
    // Negative authentication cases still pass: they expect 401 anyway.
    expect(r.cases.find((c) => c.name.startsWith('An unsigned request'))!.pass).to.equal(true);
  });

  describe('--ciphertexts-from: the proxy being replaced seals, this one opens', () => {
    let same: Harness;
    let other: Harness;
    before(async () => {
      // Another proxy on the same token, keys and credential: a migration that keeps every ciphertext.
      same = await startHarness({ hsm: { ...token.hsmConfig, pin: { file: token.pinFile } }, keyStores: [{ name: 'c', pathPrefix: '/c', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'check-key' }] }] });
      // A proxy whose "check-key" is another key: every ciphertext it made would be lost.
      writeCredential(path.join(otherToken.dir, 'creds'), cred);
      other = await startHarness({ hsm: { ...otherToken.hsmConfig, pin: { file: otherToken.pinFile } }, keyStores: [{ name: 'c', pathPrefix: '/c', credentialsDir: path.join(otherToken.dir, 'creds'), keys: [{ externalKeyId: 'check-key' }] }] });
    });
    after(async () => {
      await same?.close();
      await other?.close();
      otherToken?.cleanup();
    });
    const from = (x: Harness) => ({ ...opts(), ca: Buffer.concat([fs.readFileSync(h.certFile), fs.readFileSync(x.certFile)]), ciphertextsFrom: `https://localhost:${x.proxy.port}/c/kms/xks/v1` });

    it('passes when the other proxy seals with the same HSM key', async () => {
      const r = await runChecks(from(same));
      const m = r.cases.find((c) => c.spec === 'Encrypt, Decrypt (migration)')!;
      expect(m.pass, m.detail).to.equal(true);
      expect(r.failed, formatReport(r)).to.equal(0);
    });

    it('fails, and says which ciphertexts, when the other proxy uses another key', async () => {
      const r = await runChecks(from(other));
      const m = r.cases.find((c) => c.spec === 'Encrypt, Decrypt (migration)')!;
      expect(m.pass).to.equal(false);
      expect(m.detail).to.match(/32 bytes with AAD: HTTP 400 InvalidCiphertextException/);
    });
  });

  it('fails the TLS step against a proxy whose certificate it does not trust', async () => {
    const r = await runChecks({ ...opts(), ca: undefined });
    expect(r.tls).to.have.property('error');
    expect(r.passed).to.equal(0);
  });
});
