/**
 * The encryption count across real processes: two processes on one ledger (as the workers of
 * server.workers are) share one limit exactly, `serve` with server.workers = 2 keeps it, and a
 * proxy killed with SIGKILL leaves a count that is never below what it encrypted and at most one
 * block above.
 */
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { collectResponse } from '../../../src/util/http-response';
import { ledgerFile, UsageLedger } from '../../../src/xks/usage-ledger';
import type { Credential } from '../../helpers/proxy-harness';
import { childProxyMaterial, spawnServe } from '../../helpers/serve-process';
import { signedHeaders } from '../../helpers/signer';
import type { TestToken } from '../../helpers/softhsm-token';


describe('key versions: counts across processes (workers, SIGKILL)', function () {
  this.timeout(60_000);
  let token: TestToken;
  let cred: Credential;
  let ca: Buffer;
  let tls: { certFile: string; keyFile: string };
  const children: ChildProcess[] = [];

  before(async () => {
    ({ token, tls, ca, cred } = await childProxyMaterial(['xks-health', 'shared', 'killed']));
  });

  after(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    token?.cleanup();
  });

  async function serve(name: string, extra: { workers: number; keyVersions: Record<string, unknown> }): Promise<{ child: ChildProcess; port: number }> {
    const config = {
      // Lag shedding off, as in the harness: a loaded machine would answer 429 to a burst.
      server: { host: '127.0.0.1', port: 0, workers: extra.workers, tls, overload: { maxEventLoopLagMs: 1000 } },
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'shared' }, { externalKeyId: 'killed' }] }],
      log: { level: 'info', requestLogStdout: false },
      keyVersions: extra.keyVersions,
    };
    const file = path.join(token.dir, `${name}.json`);
    fs.writeFileSync(file, JSON.stringify(config));
    // With workers, the primary's line: it comes once every worker listens.
    const { child, port } = await spawnServe(file, { cluster: extra.workers > 1 });
    children.push(child);
    return { child, port };
  }

  /** A signed Encrypt on a fresh connection (so that requests spread over the workers). */
  async function encrypt(port: number, key: string): Promise<{ status: number; errorName?: string }> {
    const body = JSON.stringify({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'Encrypt', kmsRequestId: 'c' }, plaintext: 'eA==', encryptionAlgorithm: 'AES_GCM' });
    const p = `/a/kms/xks/v1/keys/${key}/encrypt`;
    const headers = await signedHeaders({ host: `localhost:${port}`, path: p, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
    return new Promise((resolve, reject) => {
      const req = https.request({ host: 'localhost', port, method: 'POST', path: p, headers, ca, agent: false }, (res) => collectResponse(res).then((r) => resolve({ status: r.status, errorName: r.json?.errorName }), reject));
      req.on('error', reject);
      req.end(body);
    });
  }

  it('two proxy processes on one ledger share one encryption limit exactly', async () => {
    // The mechanism server.workers relies on (each worker is a process with its own ledger
    // reader), with two single proxies so that which process serves which request is up to the test.
    const usageDir = path.join(token.dir, 'usage-two');
    const keyVersions = { usageDir, reserveBlock: 3, encryptionLimit: 30, rotation: {} };
    const one = await serve('one', { workers: 1, keyVersions });
    const two = await serve('two', { workers: 1, keyVersions });
    let ok = 0;
    for (let i = 0; i < 10; i++) for (const p of [one.port, two.port]) if ((await encrypt(p, 'shared')).status === 200) ok++;
    // The writers of the reservations (a nonce starts with the writer's pid).
    const writers = new Set(fs.readFileSync(ledgerFile(usageDir, 'shared'), 'utf8').split('\n').filter((l) => l.startsWith('e ')).map((l) => l.split(' ')[4]!.split('.')[0]));
    expect([...writers].sort()).to.deep.equal([String(one.child.pid), String(two.child.pid)].sort());
    const rest = await Promise.all(Array.from({ length: 40 }, (_, i) => encrypt(i % 2 ? one.port : two.port, 'shared')));
    expect(ok + rest.filter((r) => r.status === 200).length).to.equal(30);
    expect(rest.filter((r) => r.status !== 200).map((r) => r.errorName)).to.deep.equal(Array(40 - (30 - ok)).fill('InvalidStateException'));
    for (const c of [one.child, two.child]) {
      c.kill('SIGTERM');
      await new Promise((r) => c.once('exit', r));
    }
  });

  it('server.workers = 2: the workers share one encryption limit', async () => {
    const usageDir = path.join(token.dir, 'usage-cluster');
    const { child, port } = await serve('cluster', { workers: 2, keyVersions: { usageDir, reserveBlock: 1, encryptionLimit: 12, rotation: {} } });
    const results = await Promise.all(Array.from({ length: 30 }, () => encrypt(port, 'shared')));
    expect(results.filter((r) => r.status === 200)).to.have.length(12);
    expect(results.filter((r) => r.status !== 200).map((r) => r.errorName)).to.deep.equal(Array(18).fill('InvalidStateException'));
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  });

  it('after SIGKILL the count on disk covers every encryption done, over by less than one block', async () => {
    const usageDir = path.join(token.dir, 'usage-killed');
    const { child, port } = await serve('single', { workers: 1, keyVersions: { usageDir, reserveBlock: 50 } });
    const done = 75;
    for (let i = 0; i < done; i++) expect((await encrypt(port, 'killed')).status).to.equal(200);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const counted = new UsageLedger({ dir: usageDir, reserveBlock: 50 }).usageOf('killed').get(0)!.encryptions;
    expect(counted).to.be.at.least(done);
    expect(counted - done).to.be.below(50);
  });
});
