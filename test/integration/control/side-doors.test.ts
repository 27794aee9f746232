/**
 * The kill switch and the allowlists have no side doors (real proxy over HTTPS, real SoftHSM2
 * token, the admin API with operator JWTs, the configuration file rewritten and reloaded):
 *  - a key block stops every id, in any key store, that names the same HSM key, ids added later by
 *    a reload included, and `show` says which;
 *  - a key store added by a reload can be blocked and given a policy at once; one removed keeps its
 *    block, which applies again when it comes back;
 *  - loosening or deleting a policy needs the lift quorum, tightening applies at once;
 *  - a deny condition on a field the request does not carry matches (fails safe);
 *  - key stores without a policy can be denied by default.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { createKey } from '../../../src/hsm/key-admin';
import { createStateKey } from '../../helpers/state-hsm';
import { startHarness, writeCredential, xksCall, type Credential, type Harness, type HttpResult } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { AUDIENCE, adminClient, makeOperators, waitForLog, type Operators } from './admin-helpers';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '../../../src/cli/index.js');
const md = (op: string, over: Record<string, string> = {}) => ({ awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: op, kmsRequestId: crypto.randomUUID(), ...over });

describe('kill switch and policies: no side doors', function () {
  let token: TestToken;
  let h: Harness;
  let ops: Operators;
  const creds: Record<string, Credential> = {};
  const admin = (as: string, method: string, p: string, body?: unknown) => adminClient(() => h.proxy.adminPort!, ops)(as, method, p, body);

  const keyStore = (name: string, keys: { externalKeyId: string; label?: string }[]) => ({ name, pathPrefix: `/${name}`, credentialsDir: path.join(token.dir, `creds-${name}`), keys });

  before(async () => {
    token = createTestToken();
    for (const label of ['xks-health', 'shared', 'kb']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    for (const ks of ['a', 'b', 'c']) creds[ks] = writeCredential(path.join(token.dir, `creds-${ks}`));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'], audrey: ['auditor'] });
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [
        // a/k1 and a/alias name one HSM key; so does b/other, in another key store.
        keyStore('a', [{ externalKeyId: 'k1', label: 'shared' }, { externalKeyId: 'alias', label: 'shared' }]),
        keyStore('b', [{ externalKeyId: 'other', label: 'shared' }, { externalKeyId: 'kb' }]),
      ],
      control: { stateDir: path.join(token.dir, 'state'), watchIntervalMs: 100, killSwitch: { approvalsRequired: 2 }, admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
    });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  const encrypt = (ks: string, key: string, over: Record<string, string> = {}) =>
    xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/encrypt`, { requestMetadata: md('Encrypt', over), plaintext: Buffer.from('hello').toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred: creds[ks]! });
  const metadata = (ks: string, key: string) => xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/metadata`, { requestMetadata: md('DescribeKey') }, { cred: creds[ks]! });
  /** 'ok', 'DISABLED' (GetKeyMetadata) or the errorName. */
  const outcome = (r: HttpResult): string => (r.status === 200 ? (r.json.keyStatus === 'DISABLED' ? 'DISABLED' : 'ok') : r.json?.errorName ?? `HTTP ${r.status}`);

  const editConfig = (f: (c: any) => void) => {
    const c = JSON.parse(fs.readFileSync(h.configFile, 'utf8'));
    f(c);
    fs.writeFileSync(h.configFile, JSON.stringify(c, null, 2));
  };
  async function reload(): Promise<void> {
    const r = await admin('alice', 'POST', '/admin/v1/reload', { reason: 'config change' });
    expect(r.status, JSON.stringify(r.json)).to.equal(200);
  }
  async function engage(scope: string): Promise<void> {
    const r = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope, reason: `test ${scope}` });
    expect(r.status, JSON.stringify(r.json)).to.equal(200);
  }
  async function lift(scope: string): Promise<void> {
    await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'done' });
    const r = await admin('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'agreed' });
    expect(r.json.lifted, JSON.stringify(r.json)).to.equal(true);
  }
  const blockOf = async (scope: string) => ((await admin('audrey', 'GET', '/admin/v1/state')).json.blocks as any[]).find((b) => b.scope === scope);

  describe('a key block stops every path to the same HSM key', () => {
    it('blocking a/k1 blocks a/alias and b/other (same label), not b/kb; show lists them', async () => {
      for (const [ks, key] of [['a', 'k1'], ['a', 'alias'], ['b', 'other'], ['b', 'kb']] as const) expect(outcome(await encrypt(ks, key)), `${ks}/${key} before`).to.equal('ok');
      await engage('key:a/k1');
      expect(outcome(await encrypt('a', 'k1'))).to.equal('InvalidStateException');
      expect(outcome(await encrypt('a', 'alias')), 'another id in the same key store').to.equal('InvalidStateException');
      expect(outcome(await encrypt('b', 'other')), 'an id in another key store').to.equal('InvalidStateException');
      expect(outcome(await metadata('b', 'other'))).to.equal('DISABLED');
      expect(outcome(await encrypt('b', 'kb')), 'another HSM key').to.equal('ok');
      const block = await blockOf('key:a/k1');
      expect(block.hsmKey).to.equal('shared');
      expect(block.covers.hsmKeys).to.deep.equal(['shared']);
      expect(block.covers.externalKeys).to.deep.equal([
        { keyStore: 'a', externalKeyId: 'k1' },
        { keyStore: 'a', externalKeyId: 'alias' },
        { keyStore: 'b', externalKeyId: 'other' },
      ]);
      expect(block.covers.keyStores).to.deep.equal(['a', 'b']);
      // The metric counts every blocked id, in each key store.
      const scrape = (await h.proxy.meter.scrape()).body;
      expect(scrape).to.match(/^xks_blocked_keys\{key_store="a"\} 2$/m).and.to.match(/^xks_blocked_keys\{key_store="b"\} 1$/m);
      // The CLI on the appliance, from the files alone, says the same.
      const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'show', '--local', '--config', h.configFile]);
      const local = (JSON.parse(stdout).blocks as any[]).find((b) => b.scope === 'key:a/k1');
      expect(local.covers).to.deep.equal(block.covers);
    });

    it('an id added by reload that names the blocked HSM key is blocked at once', async () => {
      editConfig((c) => c.keyStores[1].keys.push({ externalKeyId: 'late', label: 'shared' }));
      await reload();
      expect(outcome(await encrypt('b', 'late'))).to.equal('InvalidStateException');
      expect((await blockOf('key:a/k1')).covers.externalKeys).to.deep.include({ keyStore: 'b', externalKeyId: 'late' });
    });

    it('pointing the blocked id at another HSM key by reload does not free the one it named', async () => {
      editConfig((c) => {
        c.keyStores[0].keys = [{ externalKeyId: 'k1', label: 'kb' }, { externalKeyId: 'alias', label: 'shared' }];
      });
      await reload();
      expect(outcome(await encrypt('a', 'alias'))).to.equal('InvalidStateException');
      expect(outcome(await encrypt('b', 'other'))).to.equal('InvalidStateException');
      expect((await blockOf('key:a/k1')).covers.hsmKeys).to.have.members(['shared', 'kb']);
      await lift('key:a/k1');
      for (const [ks, key] of [['a', 'k1'], ['a', 'alias'], ['b', 'other'], ['b', 'late'], ['b', 'kb']] as const) expect(outcome(await encrypt(ks, key)), `${ks}/${key} after the lift`).to.equal('ok');
    });

    it('the emergency CLI records the HSM key too: its block on b/other stops a/alias and b/late, ids of the same HSM key', async () => {
      const picked = once(h.proxy.control!, 'external-change');
      const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'emergency-engage', '--scope', 'key:b/other', '--reason', 'admin API down', '--operator', 'dave', '--config', h.configFile]);
      expect(JSON.parse(stdout)).to.include({ engaged: true, scope: 'key:b/other' });
      await picked;
      const block = await blockOf('key:b/other');
      expect(block?.hsmKey).to.equal('shared');
      expect(outcome(await encrypt('a', 'alias'))).to.equal('InvalidStateException');
      expect(outcome(await encrypt('b', 'late'))).to.equal('InvalidStateException');
      expect(outcome(await encrypt('a', 'k1'))).to.equal('ok'); // a/k1 now names kb (previous test)
      await lift('key:b/other');
      expect(outcome(await encrypt('a', 'alias'))).to.equal('ok');
    });
  });

  describe('key stores added or removed by reload', () => {
    it('a key store added by reload can be blocked and given a policy at once', async () => {
      editConfig((c) => c.keyStores.push(keyStore('c', [{ externalKeyId: 'kc', label: 'kb' }])));
      await reload();
      expect(outcome(await encrypt('c', 'kc'))).to.equal('ok');
      await engage('keystore:c');
      expect(outcome(await encrypt('c', 'kc'))).to.equal('InvalidStateException');
      await lift('keystore:c');
      const put = await admin('alice', 'PUT', '/admin/v1/policies/c', { policy: { defaultDecision: 'allow', statements: [{ sid: 'DenyUs', effect: 'deny', conditions: { kmsKeyRegion: ['us-*'] } }] }, reason: 'new tenant' });
      expect(put.status, JSON.stringify(put.json)).to.equal(200);
      expect(outcome(await encrypt('c', 'kc', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' }))).to.equal('AccessDeniedException');
      expect(outcome(await encrypt('c', 'kc'))).to.equal('ok');
    });

    it('a key store removed by reload keeps its block (shown as not configured) and is blocked again when it comes back', async () => {
      await engage('keystore:c');
      const saved = JSON.parse(fs.readFileSync(h.configFile, 'utf8'));
      editConfig((c) => (c.keyStores = c.keyStores.filter((k: { name: string }) => k.name !== 'c')));
      await reload();
      expect((await blockOf('keystore:c')).covers.notConfigured).to.deep.equal(['c']);
      fs.writeFileSync(h.configFile, JSON.stringify(saved, null, 2));
      await reload();
      expect(outcome(await encrypt('c', 'kc'))).to.equal('InvalidStateException');
      await lift('keystore:c');
    });
  });

  describe('policy changes: tightening at once, loosening and deleting by quorum', () => {
    const base = { defaultDecision: 'deny', statements: [{ sid: 'AllowAlice', effect: 'allow', conditions: { awsPrincipalArn: ['arn:aws:iam::111122223333:user/Alice'] } }] };
    const BOB_ARN = 'arn:aws:iam::111122223333:user/Bob';

    it('a first policy on a key store allowing everything is a tightening: applied at once by one operator', async () => {
      const r = await admin('alice', 'PUT', '/admin/v1/policies/b', { policy: base, reason: 'least privilege' });
      expect(r.status, JSON.stringify(r.json)).to.equal(200);
      expect(r.json).to.include({ applied: true, kind: 'tightening' });
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('AccessDeniedException');
    });

    it('a loosening by one operator stays pending; another document does not count; the same one from a second operator applies it', async () => {
      const looser = { ...base, statements: [...base.statements, { sid: 'AllowBob', effect: 'allow', conditions: { awsPrincipalArn: [BOB_ARN] } }] };
      const p1 = await admin('alice', 'PUT', '/admin/v1/policies/b', { policy: looser, reason: 'bob joins' });
      expect(p1.status, JSON.stringify(p1.json)).to.equal(202);
      expect(p1.json).to.include({ applied: false, kind: 'loosening', required: 2 });
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN })), 'still denied after one approval').to.equal('AccessDeniedException');
      const st = (await admin('audrey', 'GET', '/admin/v1/state')).json;
      expect(st.pendingPolicyApprovals.map((a: { keyStore: string; operator: string }) => `${a.keyStore}:${a.operator}`)).to.deep.equal(['b:alice']);
      // Alice again: the same operator counts once.
      expect((await admin('alice', 'PUT', '/admin/v1/policies/b', { policy: looser, reason: 'again' })).status).to.equal(202);
      // Bob approves a different loosening: it does not count for Alice's.
      const other = { ...base, defaultDecision: 'allow' };
      expect((await admin('bob', 'PUT', '/admin/v1/policies/b', { policy: other, reason: 'mine' })).status).to.equal(202);
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('AccessDeniedException');
      const p2 = await admin('bob', 'PUT', '/admin/v1/policies/b', { policy: looser, reason: 'agreed' });
      expect(p2.status, JSON.stringify(p2.json)).to.equal(200);
      expect(p2.json.approvers).to.deep.equal(['alice', 'bob']);
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('ok');
    });

    it('tightening (adding a deny, removing an allow) applies at once', async () => {
      const tighter = { defaultDecision: 'deny', statements: [...base.statements, { sid: 'DenyUs', effect: 'deny', conditions: { kmsKeyRegion: ['us-*'] } }] };
      const r = await admin('alice', 'PUT', '/admin/v1/policies/b', { policy: tighter, reason: 'bob leaves, no US keys' });
      expect(r.status, JSON.stringify(r.json)).to.equal(200);
      expect(r.json).to.include({ applied: true, kind: 'tightening' });
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('AccessDeniedException');
      expect(outcome(await encrypt('b', 'kb', { kmsKeyArn: 'arn:aws:kms:us-east-1:111122223333:key/abc' }))).to.equal('AccessDeniedException');
      expect(outcome(await encrypt('b', 'kb'))).to.equal('ok');
    });

    it('deleting a policy by one operator stays pending; the second operator applies it', async () => {
      const d1 = await admin('bob', 'DELETE', '/admin/v1/policies/b', { reason: 'rollback' });
      expect(d1.status, JSON.stringify(d1.json)).to.equal(202);
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('AccessDeniedException');
      const d2 = await admin('alice', 'DELETE', '/admin/v1/policies/b', { reason: 'agreed' });
      expect(d2.status, JSON.stringify(d2.json)).to.equal(200);
      expect(outcome(await encrypt('b', 'kb', { awsPrincipalArn: BOB_ARN }))).to.equal('ok');
    });
  });

  describe('fields the request does not carry', () => {
    it('a deny on awsSourceVpc blocks a request without awsSourceVpc; "onAbsentField": "noMatch" says otherwise', async () => {
      const deny = (extra: Record<string, unknown>) => ({ defaultDecision: 'allow', statements: [{ sid: 'DenyOutsideVpc', effect: 'deny', conditions: { awsSourceVpc: ['vpc-untrusted*'] }, ...extra }] });
      expect((await admin('alice', 'PUT', '/admin/v1/policies/a', { policy: deny({}), reason: 'no untrusted VPC' })).status).to.equal(200);
      const r = await encrypt('a', 'k1');
      expect(outcome(r)).to.equal('AccessDeniedException');
      expect(outcome(await encrypt('a', 'k1', { awsSourceVpc: 'vpc-trusted' }))).to.equal('ok');
      expect(outcome(await encrypt('a', 'k1', { awsSourceVpc: 'vpc-untrusted-1' }))).to.equal('AccessDeniedException');
      // Opting out is a loosening: the quorum.
      expect((await admin('alice', 'PUT', '/admin/v1/policies/a', { policy: deny({ onAbsentField: 'noMatch' }), reason: 'direct calls allowed' })).status).to.equal(202);
      expect((await admin('bob', 'PUT', '/admin/v1/policies/a', { policy: deny({ onAbsentField: 'noMatch' }), reason: 'agreed' })).status).to.equal(200);
      expect(outcome(await encrypt('a', 'k1'))).to.equal('ok');
    });
  });
});

describe('key stores without a policy: default deny', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;

  before(async () => {
    token = createTestToken();
    for (const label of ['xks-health', 'k1']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    cred = writeCredential(path.join(token.dir, 'creds'));
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }] }],
      control: { stateDir: path.join(token.dir, 'state'), policies: { defaultForKeyStoresWithoutPolicy: 'deny' } },
    });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  it('denies every key operation (health stays exempt) and names the setting in the request log', async () => {
    const r = await xksCall(h, '/a/kms/xks/v1/keys/k1/encrypt', { requestMetadata: md('Encrypt'), plaintext: 'eA==', encryptionAlgorithm: 'AES_GCM' }, { cred });
    expect(r.status, r.text).to.equal(403);
    expect(r.json.errorName).to.equal('AccessDeniedException');
    const health = await xksCall(h, '/a/kms/xks/v1/health', { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, { cred });
    expect(health.status).to.equal(200);
    await waitForLog(h.requestLog, h.requestLogFile, (t) => t.includes('"policyStatement":"(no policy: control.policies.defaultForKeyStoresWithoutPolicy deny)"'));
  });
});
