/**
 * The admin API: every JWT failure (401), roles (403), allowlist policies end to end (403
 * AccessDeniedException naming the statement), and SigV4 credential rotation while the proxy
 * serves traffic (no request fails during add-new, switch, remove-old).
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { SignJWT } from 'jose';
import { generateOperatorKey, mintOperatorToken } from '../../../src/admin/tokens';
import { createKey } from '../../../src/hsm/key-admin';
import { createStateKey } from '../../helpers/state-hsm';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { AUDIENCE, adminClient, adminRaw, makeOperators, waitForLog, type Operators } from './admin-helpers';

const ALICE_ARN = 'arn:aws:iam::111122223333:user/Alice';
const md = (op: string, over: Record<string, string> = {}) => ({ awsPrincipalArn: ALICE_ARN, kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: op, kmsRequestId: crypto.randomUUID(), ...over });

describe('admin API', function () {
  let token: TestToken;
  let h: Harness;
  let ops: Operators;
  let cred: Credential;
  const now = () => Math.floor(Date.now() / 1000);
  const port = () => h.proxy.adminPort!;
  const admin = (as: string, method: string, p: string, body?: unknown) => adminClient(port, ops)(as, method, p, body);
  const state = (tok: string) => adminRaw(port(), 'GET', '/admin/v1/state', tok);

  before(async function () {
    token = createTestToken();
    for (const label of ['xks-health', 'k1', 'k2']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    cred = writeCredential(path.join(token.dir, 'creds'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'], 'erin-ec': ['operator', 'auditor'], audrey: ['auditor'], temp: ['operator'] });
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }, { externalKeyId: 'k2' }] }],
      control: { stateDir: path.join(token.dir, 'state'), admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile, maxTokenLifetimeSeconds: 300 } },
    });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  describe('operator tokens', () => {
    it('accepts a valid EdDSA token and a valid ES256 token', async () => {
      expect((await state(await ops.token('alice'))).status).to.equal(200);
      expect((await state(await ops.token('erin-ec'))).status).to.equal(200);
    });

    const failures: [string, () => Promise<string | undefined>][] = [
      ['no token', async () => undefined],
      ['a forged signature (another key claiming kid alice)', async () => mintOperatorToken({ privateJwk: { ...(await generateOperatorKey('alice')).privateJwk }, role: 'operator', audience: AUDIENCE })],
      ['an unknown kid', async () => mintOperatorToken({ privateJwk: (await generateOperatorKey('mallory')).privateJwk, role: 'operator', audience: AUDIENCE })],
      ['an expired token', () => ops.token('alice', { iat: now() - 200, ttlSeconds: 60 })],
      ['an iat in the future', () => ops.token('alice', { iat: now() + 120, ttlSeconds: 60 })],
      ['a lifetime above the maximum', () => ops.token('alice', { ttlSeconds: 3600 })],
      ['no exp', () => ops.token('alice', { claims: { exp: undefined } })],
      ['no iat', () => ops.token('alice', { claims: { iat: undefined } })],
      ['no jti', () => ops.token('alice', { claims: { jti: undefined } })],
      ['a too short jti', () => ops.token('alice', { jti: 'abc' })],
      ['the wrong audience', () => ops.token('alice', { audience: 'another-appliance' })],
      ['no role', () => ops.token('alice', { claims: { xks_role: undefined } })],
      ['an unknown role', () => ops.token('alice', { role: 'root' })],
      ['a sub that is not the key owner', () => ops.token('alice', { claims: { sub: 'bob' } })],
      ['no kid in the header', () => ops.token('alice', { kid: undefined })],
      ['issued before the admin listener started', () => ops.token('alice', { iat: now() - 120, ttlSeconds: 240 })],
      ['an HMAC token (algorithm not allowed)', () => new SignJWT({ sub: 'alice', aud: AUDIENCE, iat: now(), exp: now() + 60, jti: crypto.randomBytes(16).toString('hex'), xks_role: 'operator' }).setProtectedHeader({ alg: 'HS256', kid: 'alice' }).sign(crypto.randomBytes(32))],
      ['garbage', async () => 'not.a.jwt'],
    ];
    for (const [name, make] of failures) {
      it(`401 for ${name}`, async () => {
        const r = await state((await make()) as string);
        expect(r.status, JSON.stringify(r.json)).to.equal(401);
        expect(r.headers['www-authenticate']).to.equal('Bearer');
        expect(r.json.error).to.equal('unauthorized');
      });
    }

    it('401 for a replayed token (a jti is used once)', async () => {
      const t = await ops.token('alice');
      expect((await state(t)).status).to.equal(200);
      expect((await state(t)).status).to.equal(401);
      expect(h.appLog()).to.match(/jti already used/);
    });

    it('403 for an auditor changing anything; 403 for a key claiming a role it does not have', async () => {
      for (const [method, p, body] of [
        ['POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'x' }],
        ['POST', '/admin/v1/kill-switch/approve-lift', { scope: 'proxy', reason: 'x' }],
        ['PUT', '/admin/v1/policies/a', { policy: { defaultDecision: 'deny' }, reason: 'x' }],
        ['POST', '/admin/v1/key-stores/a/credentials', { reason: 'x' }],
      ] as const) {
        const r = await admin('audrey', method, p, body);
        expect(r.status, `${method} ${p}`).to.equal(403);
      }
      expect(h.proxy.control!.publicState().blocks).to.deep.equal([]);
      // audrey's key is auditor-only: claiming operator does not make her one.
      const r = await adminRaw(port(), 'POST', '/admin/v1/kill-switch/engage', await ops.token('audrey', { role: 'operator' }), { scope: 'proxy', reason: 'x' });
      expect(r.status).to.equal(403);
      expect(h.proxy.control!.publicState().blocks).to.deep.equal([]);
      // The operator listeners' one error shape (src/http/respond.ts serviceErrorBody).
      expect(Object.keys(r.json).sort()).to.deep.equal(['error', 'message']);
      expect(r.json.error).to.equal('forbidden');
      const none = await adminRaw(port(), 'GET', '/admin/v1/nothing-here', undefined);
      expect([none.status, none.json.error]).to.deep.equal([404, 'not-found']);
    });

    it('a key removed from the JWKS file stops working without a restart', async () => {
      expect((await state(await ops.token('temp'))).status).to.equal(200);
      const jwks = JSON.parse(fs.readFileSync(ops.jwksFile, 'utf8')) as { keys: { kid: string }[] };
      fs.writeFileSync(ops.jwksFile, JSON.stringify({ keys: jwks.keys.filter((k) => k.kid !== 'temp') }));
      expect((await state(await ops.token('temp'))).status).to.equal(401);
      expect((await state(await ops.token('alice'))).status).to.equal(200);
    });

    it('refuses an engage without a reason (400) and records refused changes', async () => {
      const r = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy' });
      expect(r.status).to.equal(400);
      expect(r.json.message).to.match(/reason/);
      const bad = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:zz', reason: 'x' });
      expect(bad.status).to.equal(400);
    });
  });

  describe('allowlist policies', () => {
    const encrypt = (key: string, over: Record<string, string> = {}) =>
      xksCall(h, `/a/kms/xks/v1/keys/${key}/encrypt`, { requestMetadata: md('Encrypt', over), plaintext: Buffer.from('x').toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred });
    const policy = {
      defaultDecision: 'deny',
      statements: [
        { sid: 'AllowAliceEu', effect: 'allow', conditions: { awsPrincipalArn: ['arn:aws:iam::111122223333:user/*'], kmsKeyRegion: ['eu-west-1'] } },
        { sid: 'DenyK2ViaS3', effect: 'deny', keys: ['k2'], conditions: { kmsViaService: ['s3'] } },
      ],
    };

    it('a valid policy takes effect at once: allowed, denied by default, denied by statement; health is exempt', async () => {
      const put = await admin('alice', 'PUT', '/admin/v1/policies/a', { policy, reason: 'least privilege' });
      expect(put.status, JSON.stringify(put.json)).to.equal(200);
      expect(put.json.revision).to.equal(1);

      expect((await encrypt('k1')).status).to.equal(200);
      const us = await encrypt('k1', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' });
      expect(us.status).to.equal(403);
      expect(us.json.errorName).to.equal('AccessDeniedException');
      const s3 = await encrypt('k2', { kmsViaService: 's3' });
      expect(s3.status).to.equal(403);
      const text = await waitForLog(h.requestLog, h.requestLogFile, (t) => t.includes('"kmsViaService":"s3"'));
      const log = text.trim().split('\n').map((l) => JSON.parse(l));
      expect(log.find((r) => r.kmsRequestId === us.json?.kmsRequestId || (r.status === 403 && r.kmsKeyArn?.includes('us-east-1')))?.policyStatement).to.equal('(defaultDecision deny)');
      expect(log.find((r) => r.status === 403 && r.kmsViaService === 's3')?.policyStatement).to.equal('DenyK2ViaS3');
      expect(log.filter((r) => r.status === 200 && r.api === 'Encrypt').at(-1)?.allowedBy).to.equal('AllowAliceEu');
      // The 403 body does not reveal the policy.
      expect(us.text).to.not.include('defaultDecision');

      const health = await xksCall(h, '/a/kms/xks/v1/health', { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, { cred });
      expect(health.status).to.equal(200);
    });

    it('an invalid policy is refused with its errors and the old one stays in force', async () => {
      const r = await admin('alice', 'PUT', '/admin/v1/policies/a', { policy: { defaultDecision: 'allow', statements: [{ sid: 'x', effect: 'allow' }, { sid: 'x', effect: 'maybe' }] }, reason: 'oops' });
      expect(r.status).to.equal(400);
      expect(r.json.errors.join('\n')).to.match(/statements\.1\.effect/).and.match(/duplicate sid/);
      const g = await admin('audrey', 'GET', '/admin/v1/policies/a');
      expect(g.json.policy.revision).to.equal(1);
      expect(g.json.policy.updatedBy.operator).to.equal('alice');
      expect((await encrypt('k1', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' })).status).to.equal(403);
    });

    it('deleting the policy restores the default (allow), once the lift quorum approved it', async () => {
      const d1 = await admin('bob', 'DELETE', '/admin/v1/policies/a', { reason: 'rollback' });
      expect(d1.status, JSON.stringify(d1.json)).to.equal(202);
      expect(d1.json).to.include({ applied: false, kind: 'loosening', required: 2 });
      // One operator alone changed nothing: still denied.
      expect((await encrypt('k1', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' })).status).to.equal(403);
      const d = await admin('alice', 'DELETE', '/admin/v1/policies/a', { reason: 'agreed' });
      expect(d.status, JSON.stringify(d.json)).to.equal(200);
      expect(d.json.approvers).to.deep.equal(['bob', 'alice']);
      const after = await encrypt('k1', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' });
      expect(after.status, after.text).to.equal(200);
    });
  });

  describe('SigV4 credential rotation', () => {
    it('add new, switch, remove old while traffic flows: no request fails', async () => {
      let current = cred;
      let stop = false;
      let failures: string[] = [];
      let done = 0;
      const progress = new EventEmitter();
      const iterations = [0, 0, 0, 0];
      const worker = async (i: number) => {
        while (!stop) {
          iterations[i]!++;
          progress.emit('iter');
          const c = current;
          const r = await xksCall(h, '/a/kms/xks/v1/keys/k1/metadata', { requestMetadata: md('DescribeKey') }, { cred: c });
          if (r.status !== 200) failures.push(`${c.accessKeyId}: ${r.status} ${r.text}`);
          done++;
        }
      };
      /** Resolves once every worker has begun a new request, i.e. finished the one it had in flight. */
      const everyWorkerMovedOn = async () => {
        const mark = [...iterations];
        while (iterations.some((n, i) => n <= mark[i]!)) await once(progress, 'iter');
      };
      const workers = [0, 1, 2, 3].map(worker);
      await everyWorkerMovedOn();

      const added = await admin('alice', 'POST', '/admin/v1/key-stores/a/credentials', { reason: 'quarterly rotation' });
      expect(added.status, JSON.stringify(added.json)).to.equal(201);
      const kc = added.json.kmsProxyConfiguration;
      expect(kc.XksProxyUriPath).to.equal('/a/kms/xks/v1');
      const next: Credential = { accessKeyId: kc.XksProxyAuthenticationCredential.AccessKeyId, secret: kc.XksProxyAuthenticationCredential.RawSecretAccessKey };
      await everyWorkerMovedOn();
      // What KMS does after UpdateCustomKeyStore: sign with the new credential.
      current = next;
      await everyWorkerMovedOn();
      const removed = await admin('bob', 'DELETE', `/admin/v1/key-stores/a/credentials/${cred.accessKeyId}`, { reason: 'quarterly rotation' });
      expect(removed.status, JSON.stringify(removed.json)).to.equal(200);
      expect(removed.json.remaining).to.deep.equal([next.accessKeyId]);
      await everyWorkerMovedOn();
      stop = true;
      await Promise.all(workers);
      expect(failures).to.deep.equal([]);
      expect(done).to.be.greaterThan(8);

      // The old credential is gone at once; the last one cannot be removed.
      const old = await xksCall(h, '/a/kms/xks/v1/keys/k1/metadata', { requestMetadata: md('DescribeKey') }, { cred });
      expect(old.status).to.equal(401);
      const last = await admin('alice', 'DELETE', `/admin/v1/key-stores/a/credentials/${next.accessKeyId}`, { reason: 'oops' });
      expect(last.status).to.equal(409);
      expect(last.json.message).to.match(/last credential/);
      // The admin action records never carry the secret.
      expect(h.appLog()).to.not.include(next.secret);
      expect(h.appLog()).to.include('credentials.add');
      failures = [];
      cred = next;
    });
  });

  describe('configuration reload', () => {
    it('an operator reloads the configuration file with a reason; an auditor may not', async () => {
      const c = JSON.parse(fs.readFileSync(h.configFile, 'utf8'));
      c.log = { ...c.log, level: 'warn' };
      fs.writeFileSync(h.configFile, JSON.stringify(c));
      expect((await admin('audrey', 'POST', '/admin/v1/reload', { reason: 'try' })).status).to.equal(403);
      expect((await admin('alice', 'POST', '/admin/v1/reload', {})).status).to.equal(400);
      const r = await admin('alice', 'POST', '/admin/v1/reload', { reason: 'log level for the incident' });
      expect(r.status, JSON.stringify(r.json)).to.equal(200);
      expect(r.json.applied).to.include('log.level');
    });

    it('an invalid file is refused with its problems, and the running configuration stays', async () => {
      const good = fs.readFileSync(h.configFile, 'utf8');
      const c = JSON.parse(good);
      c.keyStores[0].pathPrefix = 'no-leading-slash';
      fs.writeFileSync(h.configFile, JSON.stringify(c));
      const r = await admin('alice', 'POST', '/admin/v1/reload', { reason: 'bad edit' });
      expect(r.status).to.equal(400);
      expect(r.json.errors.join('\n')).to.match(/keyStores\.0\.pathPrefix/);
      fs.writeFileSync(h.configFile, good);
      expect((await state(await ops.token('alice'))).status).to.equal(200);
    });
  });
});
