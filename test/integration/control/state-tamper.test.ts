/**
 * Attacks on the control state by someone with file access to the state folder, against the real
 * proxy (HTTPS, admin API, audit log) on a real SoftHSM2 token, as they were measured:
 *  - state.prev.json copied over state.json (it lifted a block within 2 s, no quorum, no log line);
 *  - the state folder deleted and the proxy restarted (it started unblocked);
 *  - a hand edit with a recomputed SHA-256 (it was accepted).
 * Each must fail closed (every call InvalidStateException), make the node not ready, be logged at
 * error level and audited as tampering, and stay so until a repair and the lift quorum. The
 * legitimate emergency CLI engage still works, and an engaged block keeps the node ready.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { canonicalJson } from '../../../src/audit/canonical';
import type { AuditLog } from '../../../src/audit/audit-log';
import { generateSigningKeyPair } from '../../../src/audit/signing';
import type { ControlPlane } from '../../../src/control/control-plane';
import { createKey } from '../../../src/hsm/key-admin';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { createStateKey } from '../../helpers/state-hsm';
import { AUDIENCE, adminClient, makeOperators, type Operators } from './admin-helpers';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '../../../src/cli/index.js');
const md = () => ({ awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() });

describe('control state tampering by file access (SoftHSM2, real proxy)', function () {
  let token: TestToken;
  let h: Harness;
  let ops: Operators;
  let credA: Credential;
  let credB: Credential;
  let stateDir: string;
  let auditFile: string;
  let configFile: string;
  let rawConfig: Record<string, any>;

  const control = (): ControlPlane => h.proxy.control!;
  const admin = (as: string, method: string, p: string, body?: unknown) => adminClient(() => h.proxy.adminPort!, ops)(as, method, p, body);
  const stateFile = () => path.join(stateDir, 'state.json');
  const prevFile = () => path.join(stateDir, 'state.prev.json');

  before(async () => {
    token = createTestToken();
    for (const label of ['xks-health', 'k1', 'kb']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    credA = writeCredential(path.join(token.dir, 'creds-a'));
    credB = writeCredential(path.join(token.dir, 'creds-b'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'] });
    const priv = path.join(token.dir, 'audit-keys', 'signing.jwk');
    await generateSigningKeyPair(priv, path.join(token.dir, 'audit-keys', 'signing.pub.jwk'));
    auditFile = path.join(token.dir, 'audit', 'audit.log');
    stateDir = path.join(token.dir, 'state');
    rawConfig = {
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [
        { name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds-a'), keys: [{ externalKeyId: 'k1' }] },
        { name: 'b', pathPrefix: '/b', credentialsDir: path.join(token.dir, 'creds-b'), keys: [{ externalKeyId: 'kb' }] },
      ],
      audit: { file: auditFile, signingKeyFile: priv },
      control: { stateDir, watchIntervalMs: 100, killSwitch: { approvalsRequired: 2 }, admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
    };
    configFile = path.join(token.dir, 'xks.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...rawConfig, server: { host: '127.0.0.1', port: 0, plainHttp: true }, log: { requestLogStdout: false } }));
    h = await startHarness(rawConfig);
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  const encrypt = (ks: 'a' | 'b') => xksCall(h, `/${ks}/kms/xks/v1/keys/${ks === 'a' ? 'k1' : 'kb'}/encrypt`, { requestMetadata: md(), plaintext: Buffer.from('hi').toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred: ks === 'a' ? credA : credB });
  const health = (ks: 'a' | 'b') => xksCall(h, `/${ks}/kms/xks/v1/health`, { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, { cred: ks === 'a' ? credA : credB });
  async function outcome(ks: 'a' | 'b'): Promise<string> {
    const r = await encrypt(ks);
    return r.status === 200 ? 'ok' : `${r.status} ${r.json?.errorName}`;
  }
  const BLOCKED = '400 InvalidStateException';

  function ready(): Promise<{ status: number; json: any }> {
    return new Promise((resolve, reject) => {
      https
        .get({ host: 'localhost', port: h.proxy.port, path: '/healthz/ready', agent: h.agent }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) }));
        })
        .on('error', reject);
    });
  }

  /** Error-level application log lines that report tampering. */
  const tamperLogLines = () =>
    h
      .appLog()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: string; message: string; reason?: string })
      .filter((l) => l.level === 'error' && /TAMPERING/.test(l.message));
  /** Tamper records in the audit log. */
  function tamperAudits(): { action: string; detail: string; outcome: string; errorName: string }[] {
    (h.proxy.audit as AuditLog).flush?.();
    if (!fs.existsSync(auditFile)) return [];
    return fs
      .readFileSync(auditFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.type === 'admin' && r.action === 'control-state.tamper');
  }

  /** Both operators approve: the normal lift quorum. */
  async function lift(scope: string): Promise<void> {
    const r1 = await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'checked' });
    expect(r1.status, JSON.stringify(r1.json)).to.equal(200);
    const r2 = await admin('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'agreed' });
    expect(r2.json.lifted, JSON.stringify(r2.json)).to.equal(true);
  }

  /** After an attack: the repair CLI writes a new authenticated state with a proxy block; the quorum lifts it. */
  async function repairAndLift(): Promise<void> {
    const reloaded = once(control(), 'reload');
    const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'repair', '--operator', 'dave', '--reason', 'after tampering', '--confirm', '--config', configFile]);
    expect(JSON.parse(stdout).blocks).to.deep.equal(['proxy']);
    await reloaded;
    expect(control().isFailClosed()).to.equal(false);
    expect(await outcome('b')).to.equal(BLOCKED);
    await lift('proxy');
    expect(await outcome('a')).to.equal('ok');
  }

  async function expectFailedClosedAsTampering(tampersBefore: number, auditsBefore: number, reason: RegExp): Promise<void> {
    for (const ks of ['a', 'b'] as const) {
      expect(await outcome(ks), `Encrypt in ${ks}`).to.equal(BLOCKED);
      const hr = await health(ks);
      expect(hr.json?.errorName, `health in ${ks}`).to.equal('InvalidStateException');
    }
    const lines = tamperLogLines();
    expect(lines.length, 'an error-level tampering log line').to.be.greaterThan(tampersBefore);
    expect(lines.at(-1)!.reason).to.match(reason);
    const audits = tamperAudits();
    expect(audits.length, 'a tampering record in the audit log').to.be.greaterThan(auditsBefore);
    expect(audits.at(-1)!.detail).to.match(reason);
    expect(audits.at(-1)).to.include({ outcome: 'error', errorName: 'Tampering' });
    expect(audits.at(-1)!.detail).to.include('via state-folder');
    const r = await ready();
    expect(r.status, JSON.stringify(r.json)).to.equal(503);
    expect(r.json).to.include({ status: 'not ready', control: 'fail-closed' });
    expect(r.json.reason).to.match(/tampering/);
    // The metrics an alert watches (ops/prometheus/alerts.yml XksControlStateTampered).
    const metrics = (await h.proxy.meter.scrape()).body;
    expect(metrics).to.match(/^xks_control_state_trusted 0$/m);
    expect(metrics).to.match(/^xks_control_state_tampered 1$/m);
    const st = await admin('alice', 'GET', '/admin/v1/state');
    expect(st.json).to.include({ tampered: true });
    expect(st.json.failClosed).to.match(reason);
    // No approval opens it; the quorum acts only after a repair.
    const refused = await admin('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope: 'keystore:a', reason: 'try to open' });
    expect(refused.status).to.equal(409);
  }

  it('state.prev.json copied over state.json does not lift a block: refused as a rollback, logged and audited', async () => {
    const e = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'INC-1' });
    expect(e.status, JSON.stringify(e.json)).to.equal(200);
    expect(await outcome('a')).to.equal(BLOCKED);
    const [logs, audits] = [tamperLogLines().length, tamperAudits().length];
    const reloaded = once(control(), 'reload');
    fs.copyFileSync(prevFile(), stateFile());
    await reloaded;
    await expectFailedClosedAsTampering(logs, audits, /older than generation .* rollback/);
    await repairAndLift();
  });

  it('a hand edit with a recomputed SHA-256 is refused, logged and audited', async () => {
    const e = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'INC-2' });
    expect(e.status).to.equal(200);
    const [logs, audits] = [tamperLogLines().length, tamperAudits().length];
    // The attacker removes the block and recomputes the integrity field the file carries, with
    // SHA-256 over the canonical JSON of the rest, as the old format's checksum was made.
    const o = JSON.parse(fs.readFileSync(stateFile(), 'utf8'));
    o.body.blocks = [];
    const field = 'mac' in o ? 'mac' : 'sha256';
    delete o[field];
    o[field] = crypto.createHash('sha256').update(canonicalJson(o)).digest('hex');
    const reloaded = once(control(), 'reload');
    fs.writeFileSync(stateFile(), JSON.stringify(o, null, 2));
    await reloaded;
    await expectFailedClosedAsTampering(logs, audits, /MAC does not verify/);
    await repairAndLift();
  });

  it('the state folder deleted and the proxy restarted: it starts failed closed, logged and audited', async () => {
    const e = await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'INC-3' });
    expect(e.status).to.equal(200);
    const audits = tamperAudits().length;
    await h.close();
    fs.rmSync(stateDir, { recursive: true, force: true });
    h = await startHarness(rawConfig);
    await expectFailedClosedAsTampering(0, audits, /missing .* the HSM records generation/);
    await repairAndLift();
  });

  it('a legitimate emergency engage from the CLI still works, is not tampering, and the node stays ready', async () => {
    const [logs, audits] = [tamperLogLines().length, tamperAudits().length];
    const changed = once(control(), 'external-change');
    const { stdout } = await run(process.execPath, [CLI, 'killswitch', 'emergency-engage', '--scope', 'keystore:b', '--reason', 'admin API unreachable', '--operator', 'dave', '--config', configFile]);
    expect(JSON.parse(stdout)).to.include({ engaged: true, scope: 'keystore:b' });
    await changed;
    expect(await outcome('b')).to.equal(BLOCKED);
    expect(await outcome('a')).to.equal('ok');
    expect((await ready()).status).to.equal(200);
    expect((await h.proxy.meter.scrape()).body).to.match(/^xks_control_state_trusted 1$/m);
    expect(tamperLogLines().length).to.equal(logs);
    expect(tamperAudits().length).to.equal(audits);
    await lift('keystore:b');
  });

  it('readiness: 200 with an engaged block (KMS gets InvalidStateException), 503 with the reason on a corrupt state file', async () => {
    await admin('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'drill' });
    expect(await outcome('a')).to.equal(BLOCKED);
    const ok = await ready();
    expect(ok.status, JSON.stringify(ok.json)).to.equal(200);
    expect(ok.json).to.not.have.property('control');
    const reloaded = once(control(), 'reload');
    fs.writeFileSync(stateFile(), fs.readFileSync(stateFile(), 'utf8').slice(0, 80));
    await reloaded;
    const r = await ready();
    expect(r.status, JSON.stringify(r.json)).to.equal(503);
    expect(r.json).to.include({ status: 'not ready', control: 'fail-closed' });
    expect(r.json.reason).to.be.a('string').and.match(/control state/);
    // Unauthenticated probe: no file paths in the answer.
    expect(JSON.stringify(r.json)).to.not.include(stateDir);
    await repairAndLift();
    expect((await ready()).status).to.equal(200);
  });
});
