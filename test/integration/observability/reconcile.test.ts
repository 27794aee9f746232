/**
 * `xks-proxy audit reconcile` end to end: a real proxy over HTTPS on a real SoftHSM2 token writes
 * its audit log; CloudTrail files are built from the documented event format for the calls "KMS"
 * made; the CLI then finds the call that KMS never made and the one KMS logged on another key.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateSigningKeyPair } from '../../../src/audit/signing';
import { main as cli } from '../../../src/cli/index';
import { createKey } from '../../../src/hsm/key-admin';
import { kmsEvent, writeCloudTrailFile } from '../../helpers/cloudtrail-events';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { captureOutput } from '../../helpers/capture-output';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

const P = '/recon/kms/xks/v1';
const KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const ALICE = 'arn:aws:iam::123456789012:user/Alice';

describe('audit reconcile against a real proxy audit log', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  let auditDir: string;
  let ctDir: string;
  const calls: { id: string; op: string; api: string }[] = [];

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt', bits: 256 });
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt', bits: 256 });
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    const priv = path.join(token.dir, 'audit-keys', 'signing.jwk');
    await generateSigningKeyPair(priv, path.join(token.dir, 'audit-keys', 'signing.pub.jwk'));
    auditDir = path.join(token.dir, 'audit');
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'recon', pathPrefix: '/recon', credentialsDir: credDir, keys: [{ externalKeyId: 'k1' }] }],
      audit: { file: path.join(auditDir, 'audit.log'), signingKeyFile: priv },
    });
    const md = (op: string, id: string) => ({ awsPrincipalArn: ALICE, kmsKeyArn: KEY, kmsOperation: op, kmsRequestId: id });
    for (const op of ['Encrypt', 'GenerateDataKey', 'Encrypt']) {
      const id = crypto.randomUUID();
      const r = await xksCall(h, `${P}/keys/k1/encrypt`, { requestMetadata: md(op, id), plaintext: Buffer.from('secret data').toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred });
      expect(r.status).to.equal(200);
      calls.push({ id, op, api: 'Encrypt' });
      if (op === 'Encrypt') {
        const did = crypto.randomUUID();
        const d = await xksCall(h, `${P}/keys/k1/decrypt`, { requestMetadata: md('Decrypt', did), ciphertext: r.json.ciphertext, initializationVector: r.json.initializationVector, authenticationTag: r.json.authenticationTag, encryptionAlgorithm: 'AES_GCM' }, { cred });
        expect(d.status).to.equal(200);
        calls.push({ id: did, op: 'Decrypt', api: 'Decrypt' });
      }
    }
    // A refused call did no HSM work: nothing to reconcile for it.
    const denied = await xksCall(h, `${P}/keys/nope/encrypt`, { requestMetadata: md('Encrypt', crypto.randomUUID()), plaintext: 'AAAA', encryptionAlgorithm: 'AES_GCM' }, { cred });
    expect(denied.status).to.equal(404);
    await h.proxy.close(1000);
    ctDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-ct-it-'));
  });

  after(async function () {
    await h?.close();
    token?.cleanup();
    if (ctDir) fs.rmSync(ctDir, { recursive: true, force: true });
  });

  const run = (...extra: string[]) => captureOutput(() => cli(['audit', 'reconcile', '--cloudtrail', ctDir, '--audit', auditDir, '--from', '2020-01-01T00:00:00Z', '--to', '2100-01-01T00:00:00Z', '--json', ...extra]));

  it('every HSM operation has its KMS event: exit 0', async () => {
    fs.rmSync(ctDir, { recursive: true, force: true });
    writeCloudTrailFile(ctDir, calls.map((c) => kmsEvent({ requestId: c.id, eventName: c.op, keyArn: KEY, principalArn: ALICE })));
    const { code, out } = await run();
    const report = JSON.parse(out);
    expect(report.matched).to.equal(calls.length);
    expect(code).to.equal(0);
  });

  it('an HSM operation KMS never logged is found and named: exit 1', async () => {
    fs.rmSync(ctDir, { recursive: true, force: true });
    const [unlogged, ...rest] = calls;
    writeCloudTrailFile(ctDir, rest.map((c) => kmsEvent({ requestId: c.id, eventName: c.op, keyArn: KEY, principalArn: ALICE })));
    const { code, out } = await run();
    expect(code).to.equal(1);
    expect(JSON.parse(out).proxyWithoutKmsEvent.map((o: { kmsRequestId: string }) => o.kmsRequestId)).to.deep.equal([unlogged!.id]);
  });

  it('a KMS event the proxy has no record of, and a principal that differs', async () => {
    fs.rmSync(ctDir, { recursive: true, force: true });
    const extra = crypto.randomUUID();
    writeCloudTrailFile(ctDir, [
      ...calls.map((c, i) => kmsEvent({ requestId: c.id, eventName: c.op, keyArn: KEY, principalArn: i === 0 ? 'arn:aws:iam::123456789012:user/Mallory' : ALICE })),
      kmsEvent({ requestId: extra, eventName: 'Decrypt', keyArn: KEY }),
    ]);
    const { code, out } = await run();
    const report = JSON.parse(out);
    expect(code).to.equal(3);
    expect(report.mismatches.map((m: { field: string; kmsRequestId: string }) => [m.field, m.kmsRequestId])).to.deep.equal([['principal', calls[0]!.id]]);
    expect(report.kmsEventsWithoutProxyRecord.map((e: { requestId: string }) => e.requestId)).to.deep.equal([extra]);
  });

  it('usage errors and unreadable input: exit 2', async () => {
    expect((await captureOutput(() => cli(['audit', 'reconcile', '--audit', auditDir]))).code).to.equal(2);
    fs.rmSync(ctDir, { recursive: true, force: true });
    fs.mkdirSync(ctDir);
    fs.writeFileSync(path.join(ctDir, 'x.json'), '{not json');
    expect((await run()).code).to.equal(2);
  });
});
