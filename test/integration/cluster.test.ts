/**
 * server.workers = 2: the CLI's `serve` as a cluster (a primary and two worker processes on one
 * port). The kill switch holds for every worker once the engage call returns; metrics aggregate
 * over the workers; a key store added by reload can be blocked and given a policy at once;
 * SIGTERM stops everything cleanly.
 */
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { listKeyVersions, rotateKey } from '../../src/hsm/key-version-admin';
import { createStateKey } from '../helpers/state-hsm';
import { collectResponse } from '../../src/util/http-response';
import { makeTlsCert, writeCredential, type Credential } from '../helpers/proxy-harness';
import { spawnServe } from '../helpers/serve-process';
import { signedHeaders } from '../helpers/signer';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';
import { AUDIENCE, adminRaw, makeOperators, type Operators } from './control/admin-helpers';


describe('cluster: server.workers = 2', function () {
  this.timeout(60_000);
  let token: TestToken;
  let child: ChildProcess;
  let stderr: () => string = () => '';
  let ports: { port: number; adminPort: number; metricsPort: number };
  let cred: Credential;
  let ops: Operators;
  let ca: Buffer;
  let configFile: string;
  let credC: Credential;

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'kr', usage: 'encrypt-decrypt' });
    await createStateKey(token);
    const tls = makeTlsCert(token.dir);
    ca = fs.readFileSync(tls.certFile);
    cred = writeCredential(path.join(token.dir, 'creds'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'] });
    const config = {
      server: { host: '127.0.0.1', port: 0, workers: 2, tls },
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }, { externalKeyId: 'kr' }] }],
      log: { level: 'info', requestLogStdout: false },
      metrics: { port: 0 },
      control: { stateDir: path.join(token.dir, 'state'), admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
    };
    credC = writeCredential(path.join(token.dir, 'creds-c'));
    configFile = path.join(token.dir, 'cluster.json');
    fs.writeFileSync(configFile, JSON.stringify(config));
    const spawned = await spawnServe(configFile, { cluster: true });
    child = spawned.child;
    stderr = spawned.stderr;
    ports = spawned.listening as typeof ports;
  });

  after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
    token?.cleanup();
  });

  /** A signed Encrypt on a fresh connection (so that requests spread over the workers). */
  async function encrypt(ks = 'a', key = 'k1', c: Credential = cred): Promise<{ status: number; errorName?: string }> {
    const body = JSON.stringify({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'Encrypt', kmsRequestId: 'c' }, plaintext: 'eA==', encryptionAlgorithm: 'AES_GCM' });
    const p = `/${ks}/kms/xks/v1/keys/${key}/encrypt`;
    const headers = await signedHeaders({ host: `localhost:${ports.port}`, path: p, body, accessKeyId: c.accessKeyId, secret: c.secret });
    return new Promise((resolve, reject) => {
      const req = https.request({ host: 'localhost', port: ports.port, method: 'POST', path: p, headers, ca, agent: false }, (res) =>
        collectResponse(res).then((r) => resolve({ status: r.status, errorName: r.json?.errorName }), reject),
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  const metrics = () =>
    new Promise<string>((resolve, reject) => {
      require('node:http').get({ host: '127.0.0.1', port: ports.metricsPort, path: '/metrics' }, (res: import('node:http').IncomingMessage) => collectResponse(res).then((r) => resolve(r.text), reject)).on('error', reject);
    });

  it('two worker processes serve one port, and /metrics sums over them', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => encrypt()));
    expect(results.map((r) => r.status)).to.deep.equal(Array(20).fill(200));
    const text = await metrics();
    const served = [...text.matchAll(/^xks_requests_total\{[^}]*api="Encrypt"[^}]*outcome="ok"[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    expect(served).to.equal(20);
    // ... but not over what is per process: one version, not two.
    expect(text).to.match(/^xks_build_info\{version="[^"]+"\} 1$/m);
    expect(stderr().match(/"message":"xks proxy listening"/g)).to.have.length(2);
  });

  it('once an engage returns, no worker serves the scope; two approvals lift it for all', async () => {
    const engage = await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/engage', await ops.token('alice'), { scope: 'keystore:a', reason: 'cluster test' });
    expect(engage.status, JSON.stringify(engage.json)).to.equal(200);
    expect(engage.json.drained).to.equal(true);
    const blocked = await Promise.all(Array.from({ length: 10 }, () => encrypt()));
    expect(blocked.map((r) => r.errorName)).to.deep.equal(Array(10).fill('InvalidStateException'));
    await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/approve-lift', await ops.token('alice'), { scope: 'keystore:a', reason: 'ok' });
    const lift = await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/approve-lift', await ops.token('bob'), { scope: 'keystore:a', reason: 'ok' });
    expect(lift.json.lifted).to.equal(true);
    // The primary's reload message reaches each worker before any new connection does (the
    // primary hands connections to workers over the same, ordered IPC channel).
    const open = await Promise.all(Array.from({ length: 10 }, () => encrypt()));
    expect(open.map((r) => r.status)).to.deep.equal(Array(10).fill(200));
  });

  it('a key store added by reload can be blocked and given a policy at once, in every worker', async () => {
    const c = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    c.keyStores.push({ name: 'c', pathPrefix: '/c', credentialsDir: path.join(token.dir, 'creds-c'), keys: [{ externalKeyId: 'kc', label: 'k1' }] });
    fs.writeFileSync(configFile, JSON.stringify(c));
    const reload = await adminRaw(ports.adminPort, 'POST', '/admin/v1/reload', await ops.token('alice'), { reason: 'new tenant' });
    expect(reload.status, JSON.stringify(reload.json)).to.equal(200);
    // The reload returns once every worker applied it: each one serves the new key store. A worker
    // compares the file with its own view of it (no metrics port, its own audit folder), so it
    // reports no setting as changed.
    expect(reload.json.needsRestart).to.deep.equal([]);
    expect(reload.json.workers).to.deep.equal({ reloaded: 2, failed: [], needsRestart: [] });
    const served = await Promise.all(Array.from({ length: 10 }, () => encrypt('c', 'kc', credC)));
    expect(served.map((r) => r.status)).to.deep.equal(Array(10).fill(200));

    const engage = await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/engage', await ops.token('alice'), { scope: 'keystore:c', reason: 'new tenant drill' });
    expect(engage.status, JSON.stringify(engage.json)).to.equal(200);
    const blocked = await Promise.all(Array.from({ length: 10 }, () => encrypt('c', 'kc', credC)));
    expect(blocked.map((r) => r.errorName)).to.deep.equal(Array(10).fill('InvalidStateException'));
    await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/approve-lift', await ops.token('alice'), { scope: 'keystore:c', reason: 'ok' });
    expect((await adminRaw(ports.adminPort, 'POST', '/admin/v1/kill-switch/approve-lift', await ops.token('bob'), { scope: 'keystore:c', reason: 'ok' })).json.lifted).to.equal(true);

    const put = await adminRaw(ports.adminPort, 'PUT', '/admin/v1/policies/c', await ops.token('alice'), { policy: { defaultDecision: 'deny', statements: [] }, reason: 'closed until onboarding' });
    expect(put.status, JSON.stringify(put.json)).to.equal(200);
    const denied = await Promise.all(Array.from({ length: 10 }, () => encrypt('c', 'kc', credC)));
    expect(denied.map((r) => r.errorName)).to.deep.equal(Array(10).fill('AccessDeniedException'));
    // The key store configured at start is not affected.
    expect((await encrypt()).status).to.equal(200);
  });

  /** A signed XKS call of key store a on a fresh connection: status and JSON body. */
  async function xks(op: 'encrypt' | 'decrypt', key: string, fields: Record<string, string>): Promise<{ status: number; json: Record<string, string> }> {
    const body = JSON.stringify({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: op === 'encrypt' ? 'Encrypt' : 'Decrypt', kmsRequestId: 'r' }, encryptionAlgorithm: 'AES_GCM', ...fields });
    const p = `/a/kms/xks/v1/keys/${key}/${op}`;
    const headers = await signedHeaders({ host: `localhost:${ports.port}`, path: p, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
    return new Promise((resolve, reject) => {
      const req = https.request({ host: 'localhost', port: ports.port, method: 'POST', path: p, headers, ca, agent: false }, (res) => collectResponse(res).then((r) => resolve({ status: r.status, json: (r.json ?? {}) as Record<string, string> }), reject));
      req.on('error', reject);
      req.end(body);
    });
  }

  it('a key version is retired through the primary\'s admin API once two operators approved; no worker decrypts its ciphertexts afterwards', async () => {
    const sealed = await xks('encrypt', 'kr', { plaintext: Buffer.from('old data key').toString('base64') });
    expect(sealed.status, JSON.stringify(sealed.json)).to.equal(200);
    expect(sealed.json.ciphertextMetadata).to.equal(undefined); // the original version
    expect(await rotateKey(token.hsmConfig, token.pin, 'kr')).to.equal(1);
    const retire = async (as: string) => adminRaw(ports.adminPort, 'POST', '/admin/v1/key-versions/retire', await ops.token(as), { keyStore: 'a', externalKeyId: 'kr', version: 0, forceRecentUse: true, reason: 'cluster retire drill' });
    const first = await retire('alice');
    expect(first.status, JSON.stringify(first.json)).to.equal(202);
    expect(first.json.retired).to.equal(false);
    const second = await retire('bob');
    expect(second.status, JSON.stringify(second.json)).to.equal(200);
    expect(second.json).to.include({ retired: true });
    expect(second.json.approvers).to.have.members(['alice', 'bob']);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'kr')).map((v) => v.version)).to.deep.equal([1]);
    const fields = { ciphertext: sealed.json.ciphertext!, initializationVector: sealed.json.initializationVector!, authenticationTag: sealed.json.authenticationTag! };
    const after = await Promise.all(Array.from({ length: 8 }, () => xks('decrypt', 'kr', fields)));
    expect(after.map((r) => r.json.errorName)).to.deep.equal(Array(8).fill('InvalidCiphertextException'));
    // The current version serves on.
    expect((await xks('encrypt', 'kr', { plaintext: 'eA==' })).status).to.equal(200);
  });

  it('SIGTERM stops the primary and its workers, exit 0', async () => {
    const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exit).to.equal(0);
  });
});
