/**
 * The kill switch end to end: real HTTPS, real SoftHSM2 token, the admin API with operator JWTs.
 * Each scope against all four APIs; the drain guarantee under a burst; quorum; restart; the
 * emergency CLI on a running proxy; a corrupt state file failing closed and its repair.
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
import { openPkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import type { ControlPlane } from '../../../src/control/control-plane';
import { STATE_FILE } from '../../../src/control/state-store';
import { startHarness, writeCredential, xksCall, type Credential, type Harness, type HttpResult } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { AUDIENCE, adminClient, makeOperators, waitForLog, type Operators } from './admin-helpers';
import { CountingBackend } from './counting-backend';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '../../../src/cli/index.js');
const b64 = (b: Buffer) => b.toString('base64');
const md = (op: string) => ({ awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: op, kmsRequestId: crypto.randomUUID() });

describe('kill switch over HTTPS against SoftHSM2', function () {
  let token: TestToken;
  let h: Harness;
  let backend: CountingBackend;
  let ops: Operators;
  let credA: Credential;
  let credB: Credential;
  let stateDir: string;
  let configFile: string;
  let rawConfig: Record<string, any>;
  let sealed: { ciphertext: string; initializationVector: string; authenticationTag: string };

  const control = (): ControlPlane => h.proxy.control!;
  const admin = (as: string, method: string, p: string, body?: unknown) => adminClient(() => h.proxy.adminPort!, ops)(as, method, p, body);

  async function start(): Promise<void> {
    backend = new CountingBackend(await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger()));
    h = await startHarness(rawConfig, { hsm: backend });
  }

  before(async function () {
    token = createTestToken();
    for (const label of ['xks-health', 'k1', 'k2', 'kb']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    credA = writeCredential(path.join(token.dir, 'creds-a'));
    credB = writeCredential(path.join(token.dir, 'creds-b'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'], carol: ['operator'], audrey: ['auditor'] });
    stateDir = path.join(token.dir, 'state');
    rawConfig = {
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [
        { name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds-a'), keys: [{ externalKeyId: 'k1' }, { externalKeyId: 'k2' }] },
        { name: 'b', pathPrefix: '/b', credentialsDir: path.join(token.dir, 'creds-b'), keys: [{ externalKeyId: 'kb' }] },
      ],
      control: { stateDir, watchIntervalMs: 100, killSwitch: { approvalsRequired: 2 }, admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
    };
    // The same settings as a file, for the CLI.
    configFile = path.join(token.dir, 'xks.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...rawConfig, server: { host: '127.0.0.1', port: 0, plainHttp: true }, log: { requestLogStdout: false } }));
    await start();
    const r = await encrypt('a', 'k1');
    expect(r.status, r.text).to.equal(200);
    sealed = r.json;
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  const cred = (ks: string) => (ks === 'a' ? credA : credB);
  const encrypt = (ks: string, key: string) => xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/encrypt`, { requestMetadata: md('Encrypt'), plaintext: b64(Buffer.from('hello')), encryptionAlgorithm: 'AES_GCM' }, { cred: cred(ks) });
  const call = (ks: string, key: string, api: string): Promise<HttpResult> => {
    switch (api) {
      case 'GetHealthStatus':
        return xksCall(h, `/${ks}/kms/xks/v1/health`, { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, { cred: cred(ks) });
      case 'GetKeyMetadata':
        return xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/metadata`, { requestMetadata: md('DescribeKey') }, { cred: cred(ks) });
      case 'Encrypt':
        return encrypt(ks, key);
      default:
        return ks === 'a' && key === 'k1'
          ? xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/decrypt`, { requestMetadata: md('Decrypt'), encryptionAlgorithm: 'AES_GCM', ...sealed }, { cred: cred(ks) })
          : // Other keys: a ciphertext that does not belong to them; reaching the HSM gives InvalidCiphertextException.
            xksCall(h, `/${ks}/kms/xks/v1/keys/${key}/decrypt`, { requestMetadata: md('Decrypt'), encryptionAlgorithm: 'AES_GCM', ...sealed }, { cred: cred(ks) });
    }
  };
  /** What each API answers: 'ok', 'DISABLED' (metadata keyStatus), or the errorName. */
  async function effect(ks: string, key: string, api: string): Promise<string> {
    const r = await call(ks, key, api);
    if (r.status === 200) return api === 'GetKeyMetadata' && r.json.keyStatus === 'DISABLED' ? 'DISABLED' : 'ok';
    if (r.json?.errorName === 'InvalidCiphertextException') return 'ok'; // reached the HSM: not blocked
    expect(r.status, r.text).to.equal(400);
    return r.json.errorName;
  }
  async function lift(scope: string): Promise<void> {
    const r1 = await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'resolved' });
    expect(r1.status, JSON.stringify(r1.json)).to.equal(200);
    expect(r1.json.lifted).to.equal(false);
    const r2 = await admin('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'agreed' });
    expect(r2.json.lifted, JSON.stringify(r2.json)).to.equal(true);
  }

  const APIS = ['GetHealthStatus', 'GetKeyMetadata', 'Encrypt', 'Decrypt'];
  const I = 'InvalidStateException';
  const scopes: [string, Record<string, string>, Record<string, string>, Record<string, string>][] = [
    // scope, effect on a/k1, on a/k2, on b/kb
    ['proxy', { GetHealthStatus: I, GetKeyMetadata: I, Encrypt: I, Decrypt: I }, { GetHealthStatus: I, GetKeyMetadata: I, Encrypt: I, Decrypt: I }, { GetHealthStatus: I, GetKeyMetadata: I, Encrypt: I, Decrypt: I }],
    ['keystore:a', { GetHealthStatus: I, GetKeyMetadata: I, Encrypt: I, Decrypt: I }, { GetHealthStatus: I, GetKeyMetadata: I, Encrypt: I, Decrypt: I }, { GetHealthStatus: 'ok', GetKeyMetadata: 'ok', Encrypt: 'ok', Decrypt: 'ok' }],
    ['key:a/k1', { GetHealthStatus: 'ok', GetKeyMetadata: 'DISABLED', Encrypt: I, Decrypt: I }, { GetHealthStatus: 'ok', GetKeyMetadata: 'ok', Encrypt: 'ok', Decrypt: 'ok' }, { GetHealthStatus: 'ok', GetKeyMetadata: 'ok', Encrypt: 'ok', Decrypt: 'ok' }],
  ];
  for (const [scope, a1, a2, bb] of scopes) {
    it(`scope ${scope}: engage by one operator, effect on all four APIs, lift by two`, async () => {
      const e = await admin('carol', 'POST', '/admin/v1/kill-switch/engage', { scope, reason: `drill ${scope}` });
      expect(e.status, JSON.stringify(e.json)).to.equal(200);
      expect(e.json).to.include({ engaged: true, scope, drained: true });
      for (const api of APIS) {
        expect(await effect('a', 'k1', api), `a/k1 ${api}`).to.equal(a1[api]);
        expect(await effect('a', 'k2', api), `a/k2 ${api}`).to.equal(a2[api]);
        expect(await effect('b', 'kb', api), `b/kb ${api}`).to.equal(bb[api]);
      }
      // The request log says why (kill switch) without the operator's reason text.
      await waitForLog(h.requestLog, h.requestLogFile, (t) => t.includes(`kill switch engaged (scope ${scope})`));
      // ... and as a stable code for tools (XksError.reason).
      const code = ({ proxy: 'kill_switch.proxy', 'keystore:a': 'kill_switch.key_store', 'key:a/k1': 'kill_switch.key' } as Record<string, string>)[scope];
      await waitForLog(h.requestLog, h.requestLogFile, (t) => t.includes(`"reasonCode":"${code}"`));
      await lift(scope);
      for (const api of APIS) expect(await effect('a', 'k1', api), `after lift ${api}`).to.equal('ok');
    });
  }

  it('the load-balancer readiness probe stays 200 while the proxy is blocked', async () => {
    await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'readiness check' });
    const r = await new Promise<number>((resolve, reject) => {
      require('node:https')
        .get({ host: 'localhost', port: h.proxy.port, path: '/healthz/ready', agent: h.agent }, (res: { statusCode: number; resume(): void }) => {
          res.resume();
          resolve(res.statusCode);
        })
        .on('error', reject);
    });
    expect(r).to.equal(200);
    await lift('proxy');
  });

  it('no HSM operation starts in scope once the engage call has returned (burst in flight)', async () => {
    let startedAtEngage = -1;
    control().once('engaged', () => {
      startedAtEngage = backend.started;
    });
    const firstStart = once(backend.events, 'start');
    const burst = Array.from({ length: 40 }, () => encrypt('a', 'k1'));
    await firstStart;
    const e = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'burst test' });
    expect(e.json.drained).to.equal(true);
    const results = await Promise.all(burst);
    const ok = results.filter((r) => r.status === 200).length;
    const blocked = results.filter((r) => r.json?.errorName === 'InvalidStateException').length;
    expect(ok + blocked, results.map((r) => r.text).join('\n')).to.equal(40);
    expect(ok).to.be.greaterThan(0);
    expect(blocked).to.be.greaterThan(0);
    expect(startedAtEngage).to.be.greaterThan(0);
    expect(backend.started, 'HSM operations started after engage returned').to.equal(startedAtEngage);
    await lift('keystore:a');
  });

  it('the state survives a restart: still blocked, quorum continues where it was', async () => {
    await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:b', reason: 'restart test' });
    const a1 = await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope: 'keystore:b', reason: 'first' });
    expect(a1.json.lifted).to.equal(false);
    await h.close();
    await start();
    expect(await effect('b', 'kb', 'Encrypt')).to.equal(I);
    expect(await effect('b', 'kb', 'GetHealthStatus')).to.equal(I);
    const a2 = await admin('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope: 'keystore:b', reason: 'second' });
    expect(a2.json.lifted).to.equal(true);
    expect(await effect('b', 'kb', 'Encrypt')).to.equal('ok');
  });

  it('the emergency CLI engages on the files; the running proxy picks it up and records it', async () => {
    const reloaded = once(control(), 'external-change');
    const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'emergency-engage', '--scope', 'key:a/k2', '--reason', 'admin API unreachable', '--operator', 'dave', '--config', configFile]);
    expect(JSON.parse(stdout)).to.include({ engaged: true, scope: 'key:a/k2' });
    await reloaded;
    expect(await effect('a', 'k2', 'Encrypt')).to.equal(I);
    expect(await effect('a', 'k2', 'GetKeyMetadata')).to.equal('DISABLED');
    expect(await effect('a', 'k1', 'Encrypt')).to.equal('ok');
    const st = await admin('audrey', 'GET', '/admin/v1/state');
    expect(st.status).to.equal(200);
    expect(st.json.blocks.find((b: { scope: string }) => b.scope === 'key:a/k2').engagedBy).to.include({ operator: 'dave', via: 'local-cli' });
    // Recorded as an admin action (to the audit stream; here, without an audit file, the app log).
    expect(h.appLog().split('\n').some((l) => l.includes('admin action') && l.includes('"kill-switch.engage"') && l.includes('"dave"'))).to.equal(true);
    await lift('key:a/k2');
  });

  it('CLI engage and approve-lift go through the admin API with a fresh token each', async () => {
    const keyFile = path.join(token.dir, 'carol.private.jwk.json');
    fs.writeFileSync(keyFile, JSON.stringify(ops.keys.carol!.privateJwk), { mode: 0o600 });
    const adminUrl = `http://127.0.0.1:${h.proxy.adminPort}`;
    const common = ['--config', configFile, '--admin-url', adminUrl, '--key', keyFile];
    const e = await run(process.execPath, [CLI, 'killswitch', 'engage', '--scope', 'keystore:b', '--reason', 'cli drill', ...common]);
    expect(JSON.parse(e.stdout)).to.include({ engaged: true, scope: 'keystore:b' });
    const a = await run(process.execPath, [CLI, 'killswitch', 'approve-lift', '--scope', 'keystore:b', '--reason', 'cli ok', ...common]);
    expect(JSON.parse(a.stdout)).to.include({ lifted: false });
    const r2 = await admin('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope: 'keystore:b', reason: 'agreed' });
    expect(r2.json.lifted).to.equal(true);
  });

  it('a corrupt state file fails closed (all APIs, health included) until repaired, and repair keeps the proxy blocked', async () => {
    await h.close();
    fs.writeFileSync(path.join(stateDir, STATE_FILE), fs.readFileSync(path.join(stateDir, STATE_FILE), 'utf8').slice(0, 100));
    await start();
    for (const api of APIS) expect(await effect('b', 'kb', api), api).to.equal(I);
    expect(h.appLog()).to.match(/control state TAMPERING detected/);
    const st = await admin('audrey', 'GET', '/admin/v1/state');
    expect(st.json.failClosed).to.match(/not valid JSON/);
    const refused = await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope: 'proxy', reason: 'try to open' });
    expect(refused.status).to.equal(409);
    expect(refused.json.message).to.match(/killswitch repair/);

    const reloaded = once(control(), 'reload');
    const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'repair', '--operator', 'dave', '--reason', 'disk replaced', '--confirm', '--config', configFile]);
    expect(JSON.parse(stdout).blocks).to.deep.equal(['proxy']);
    await reloaded;
    expect(control().isFailClosed()).to.equal(false);
    expect(await effect('b', 'kb', 'GetHealthStatus')).to.equal(I);
    await lift('proxy');
    for (const api of APIS) expect(await effect('b', 'kb', api), api).to.equal('ok');
  });
});
