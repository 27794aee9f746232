/**
 * Retiring a key version through the admin API and the CLI, on a real SoftHSM2 token over real
 * HTTPS: pending until two distinct operators approved it within the window, then destroyed in the
 * HSM, audited with the approvers, gone from the metrics; its ciphertexts then answer
 * InvalidCiphertextException while the other versions still decrypt. Refusals: the current version,
 * the original while it is the only one, a version used within keyVersions.retireQuietDays unless
 * forceRecentUse is approved.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { generateSigningKeyPair } from '../../../src/audit/signing';
import { main } from '../../../src/cli/index';
import { createKey } from '../../../src/hsm/key-admin';
import { listKeyVersions, rotateKey } from '../../../src/hsm/key-version-admin';
import { captureOutput } from '../../helpers/capture-output';
import { eventually, sealedOf, xksClient, type Sealed } from '../../helpers/key-version-client';
import { startHarness, writeCredential, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { createStateKey } from '../../helpers/state-hsm';
import { AUDIENCE, adminClient, makeOperators, type Operators } from '../control/admin-helpers';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '../../../src/cli/index.js');

describe('key versions: retiring a version needs the quorum', function () {
  this.timeout(30_000);
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  let ops: Operators;
  let auditFile: string;
  const aad = crypto.randomBytes(32);
  const plaintext = Buffer.from('a data key');
  const admin = (as: string, body: Record<string, unknown>) => adminClient(() => h.proxy.adminPort!, ops)(as, 'POST', '/admin/v1/key-versions/retire', { keyStore: 'ks', reason: 'retire test', ...body });
  const c = () => xksClient(h, cred);
  const auditRecords = () =>
    fs
      .readFileSync(auditFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; operator?: string; action?: string; scope?: string; outcome?: string; detail?: string });

  /** Encrypts under `key` until the proxy uses `version` (it reads the versions every 100 ms). */
  async function sealUnder(key: string, version: number): Promise<Sealed> {
    return eventually(async () => {
      const r = await c().encrypt(key, plaintext, aad);
      expect(r.status, r.text).to.equal(200);
      const v = r.json.ciphertextMetadata === undefined ? 0 : Buffer.from(r.json.ciphertextMetadata, 'base64').readUInt32BE(1);
      return v === version ? sealedOf(r.json) : undefined;
    }, `Encrypt under version ${version} of ${key}`);
  }

  before(async function () {
    token = createTestToken();
    for (const label of ['xks-health', 'kq', 'kr', 'solo']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'] });
    const priv = path.join(token.dir, 'audit-keys', 'signing.jwk');
    await generateSigningKeyPair(priv, path.join(token.dir, 'audit-keys', 'signing.pub.jwk'));
    auditFile = path.join(token.dir, 'audit', 'audit.log');
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: credDir, keys: [{ externalKeyId: 'kq' }, { externalKeyId: 'kr' }, { externalKeyId: 'solo' }] }],
      keyVersions: { rescanIntervalMs: 100, usageDir: path.join(token.dir, 'usage') },
      control: { stateDir: path.join(token.dir, 'state'), killSwitch: { approvalsRequired: 2 }, admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
      audit: { file: auditFile, signingKeyFile: priv },
      metrics: { adminListener: 'authenticated' },
    });
  });

  after(async function () {
    await h?.close();
    token?.cleanup();
  });

  it('is pending until two distinct operators approved; then destroyed, audited with both, gone from the metrics; its ciphertexts answer InvalidCiphertextException, the others decrypt', async () => {
    const s0 = await sealUnder('kq', 0);
    await rotateKey(token.hsmConfig, token.pin, 'kq');
    const s1 = await sealUnder('kq', 1);
    await rotateKey(token.hsmConfig, token.pin, 'kq');
    const s2 = await sealUnder('kq', 2);

    const first = await admin('alice', { externalKeyId: 'kq', version: 1 });
    expect(first.status, first.text).to.equal(202);
    expect(first.json).to.include({ retired: false, approved: false, required: 2 });
    expect(first.json.approvers).to.deep.equal(['alice']);
    expect(first.json.warning).to.match(/undecryptable for ever/);
    // The same operator twice is still one approval.
    const again = await admin('alice', { externalKeyId: 'kq', version: 1 });
    expect(again.status, again.text).to.equal(202);
    expect(again.json.approvers).to.deep.equal(['alice']);
    const state = await adminClient(() => h.proxy.adminPort!, ops)('bob', 'GET', '/admin/v1/state');
    expect(state.json.pendingRetireApprovals.map((a: { keyLabel: string; version: number; operator: string }) => [a.keyLabel, a.version, a.operator])).to.deep.equal([['kq', 1, 'alice']]);
    // Durable in the authenticated state file, as the emergency CLI reads it (another process).
    const local = JSON.parse((await run(process.execPath, [CLI, 'killswitch', 'show', '--local', '--config', h.configFile])).stdout);
    expect(local.retireApprovals.map((a: { keyLabel: string; version: number; by: { operator: string } }) => [a.keyLabel, a.version, a.by.operator])).to.deep.equal([['kq', 1, 'alice']]);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'kq')).map((v) => v.version), 'nothing destroyed while pending').to.deep.equal([1, 2]);

    const second = await admin('bob', { externalKeyId: 'kq', version: 1, forceRecentUse: true });
    expect(second.status, 'an approval of another change (force) does not count with alice').to.equal(202);
    expect(second.json.approvers).to.deep.equal(['bob']);
    // bob's newer approval (without force) replaces his forced one and completes the quorum.
    const done = await admin('bob', { externalKeyId: 'kq', version: 1 });
    expect(done.status, done.text).to.equal(200);
    expect(done.json).to.include({ retired: true, approved: true });
    expect(done.json.approvers).to.have.members(['alice', 'bob']);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'kq')).map((v) => v.version)).to.deep.equal([2]);

    const gone = await c().decrypt('kq', s1, aad);
    expect(gone.status, gone.text).to.equal(400);
    expect(gone.json.errorName).to.equal('InvalidCiphertextException');
    for (const s of [s0, s2]) {
      const d = await c().decrypt('kq', s, aad);
      expect(d.status, d.text).to.equal(200);
      expect(Buffer.from(d.json.plaintext, 'base64').equals(plaintext)).to.equal(true);
    }
    const retired = await eventually(async () => auditRecords().find((r) => r.action === 'key-version.retired'), 'key-version.retired audited');
    expect(retired).to.include({ operator: 'bob', scope: 'hsmkey:kq', outcome: 'ok' });
    expect(retired.detail).to.match(/version 1; approved by alice, bob; reason: retire test/);
    const metrics = (await adminClient(() => h.proxy.adminPort!, ops)('alice', 'GET', '/metrics')).text;
    expect(metrics).to.match(/xks_key_version_decrypts\{key="kq",version="0"\}/);
    expect(metrics).to.match(/xks_key_version_decrypts\{key="kq",version="2"\}/);
    expect(metrics).not.to.match(/xks_key_version_\w+\{key="kq",version="1"\}/);
  });

  it('refuses the current version, the original while it is the only one, and a version the key does not have', async () => {
    await sealUnder('solo', 0);
    const only = await admin('alice', { externalKeyId: 'solo', version: 0 });
    expect(only.status, only.text).to.equal(409);
    expect(only.json.message).to.match(/only version/);
    const current = await admin('alice', { externalKeyId: 'kq', version: 2 });
    expect(current.status).to.equal(409);
    expect(current.json.message).to.match(/current \(encrypting\) version.*rotate first/);
    expect((await admin('alice', { externalKeyId: 'kq', version: 1 })).status, 'already retired').to.equal(404);
    expect((await admin('alice', { externalKeyId: 'nope', version: 0 })).status).to.equal(404);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'solo')).length).to.equal(0);
    expect((await c().encrypt('solo', plaintext, aad)).status).to.equal(200);
  });

  it('a version that decrypted within retireQuietDays needs forceRecentUse from the quorum; retiring the original keeps GetKeyMetadata and the other versions', async () => {
    const s0 = await sealUnder('kr', 0);
    expect((await c().decrypt('kr', s0, aad)).status).to.equal(200);
    await rotateKey(token.hsmConfig, token.pin, 'kr');
    const s1 = await sealUnder('kr', 1);
    const metaBefore = (await c().metadata('kr')).json;

    const refused = await admin('alice', { externalKeyId: 'kr', version: 0 });
    expect(refused.status, refused.text).to.equal(409);
    expect(refused.json.message).to.match(/decrypted 1 times.*retireQuietDays \(30 days\).*forceRecentUse/);
    expect((await admin('alice', { externalKeyId: 'kr', version: 0, forceRecentUse: true })).status).to.equal(202);
    const done = await admin('bob', { externalKeyId: 'kr', version: 0, forceRecentUse: true });
    expect(done.status, done.text).to.equal(200);
    expect(done.json).to.include({ retired: true, forceRecentUse: true, decrypts: 1 });

    const gone = await c().decrypt('kr', s0, aad);
    expect(gone.json.errorName, gone.text).to.equal('InvalidCiphertextException');
    expect((await c().decrypt('kr', s1, aad)).status).to.equal(200);
    expect((await c().metadata('kr')).json, 'GetKeyMetadata answers from the current version').to.deep.equal(metaBefore);
    const rec = await eventually(async () => auditRecords().find((r) => r.action === 'key-version.retired' && r.scope === 'hsmkey:kr'), 'audited');
    expect(rec.detail).to.match(/version 0; approved by alice, bob; force-recent-use \(1 decrypts/);
    const listed = await captureOutput(() => main(['keys', 'versions', '--key-store', 'ks', '--key-id', 'kr', '--json', '--config', h.configFile]));
    expect(JSON.parse(listed.out).versions.map((v: { version: number }) => v.version), listed.err).to.deep.equal([1]);
  });

  it('the CLI warns that the ciphertexts become undecryptable, and records one approval through the admin API (--force-recent-use for a version read recently)', async () => {
    await rotateKey(token.hsmConfig, token.pin, 'kq');
    await sealUnder('kq', 3);
    const keyFile = path.join(token.dir, 'alice.private.jwk.json');
    fs.writeFileSync(keyFile, JSON.stringify(ops.keys.alice!.privateJwk), { mode: 0o600 });
    const r = await captureOutput(() => main(['keys', 'retire', '--key-store', 'ks', '--key-id', 'kq', '--version', '2', '--reason', 'cli test', '--force-recent-use', '--key', keyFile, '--audience', AUDIENCE, '--admin-url', `http://127.0.0.1:${h.proxy.adminPort}`, '--config', h.configFile]));
    expect(r.err).to.match(/WARNING: retiring version 2 of key "ks\/kq" destroys it in the HSM: every ciphertext it sealed .* becomes undecryptable for ever/);
    expect(r.err).to.match(/--force-recent-use: this approves retiring it although it decrypted within keyVersions.retireQuietDays/);
    expect(r.code, r.err).to.equal(0);
    expect(JSON.parse(r.out)).to.include({ retired: false, keyLabel: 'kq', version: 2, forceRecentUse: true });
    // Without the flag the same request is refused: version 2 decrypted in the first test.
    const plain = await captureOutput(() => main(['keys', 'retire', '--key-store', 'ks', '--key-id', 'kq', '--version', '2', '--reason', 'cli test', '--key', keyFile, '--audience', AUDIENCE, '--admin-url', `http://127.0.0.1:${h.proxy.adminPort}`, '--config', h.configFile]));
    expect(plain.code).to.equal(1);
    expect(plain.err).to.match(/retireQuietDays/);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'kq')).map((v) => v.version)).to.deep.equal([2, 3]);
  });
});
