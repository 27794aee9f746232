/**
 * Fleet mode against a real three-member etcd cluster (Debian's etcd-server on loopback ports) and
 * real proxies in this process on one SoftHSM2 token (the demo's shared token): one kill switch,
 * one quorum, one replay set, live membership, and failing closed without an etcd quorum.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { Etcd3 } from 'etcd3';
import path from 'node:path';
import { createKey } from '../../../src/hsm/key-admin';
import https from 'node:https';
import { collectResponse } from '../../../src/util/http-response';
import { createStateKey } from '../../helpers/state-hsm';
import { spawnServe } from '../../helpers/serve-process';
import { signedHeaders } from '../../helpers/signer';
import { startEtcdCluster, type EtcdCluster } from '../../helpers/etcd-cluster';
import { until } from '../../helpers/until';
import { makeTlsCert, rawRequest, startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { waitEvent } from '../../helpers/wait-event';
import { AUDIENCE, adminClient, adminRaw, makeOperators, type Operators } from '../control/admin-helpers';

const b64 = (b: Buffer) => b.toString('base64');
const md = (op: string) => ({ awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: op, kmsRequestId: crypto.randomUUID() });
/** The staleness bound the proxies run with here (the default is 3000 ms). */
const MAX_STALENESS_MS = 1500;
const CLI = path.resolve(__dirname, '../../../src/cli/index.js');

/** The admin-action records of one kind in a proxy's application log (the audit sink without an audit log). */
function adminActions(log: string, action: string): Array<{ detail: string; reason?: string }> {
  return log
    .split('\n')
    .filter((l) => l.includes(`"action":"${action}"`))
    .map((l) => JSON.parse(l) as { detail: string; reason?: string });
}


describe('fleet mode on a real etcd cluster', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let token: TestToken;
  let ops: Operators;
  let cred: Credential;
  let prefix: string;
  const proxies: Record<string, Harness> = {};

  const configFor = (nodeId: string, etcdExtra: Record<string, unknown> = {}) => ({
    hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
    keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }, { externalKeyId: 'k2' }] }],
    control: {
      store: 'etcd',
      etcd: { endpoints: etcd.endpoints, prefix, nodeId, maxStalenessMs: MAX_STALENESS_MS, leaseTtlSeconds: 4, ackTimeoutMs: 3000, ...etcdExtra },
      killSwitch: { approvalsRequired: 2 },
      admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile },
    },
    // The fleet metrics are read through the admin listener (off there by default).
    metrics: { adminListener: 'authenticated' },
  });
  /** A configuration for the CLI on the fleet (no member of its own). */
  const cliConfig = () => {
    const file = path.join(token.dir, 'fleet-cli.json');
    fs.writeFileSync(file, JSON.stringify({ ...configFor('cli'), server: { host: '127.0.0.1', port: 0, plainHttp: true }, log: { requestLogStdout: false } }));
    return file;
  };
  const start = async (nodeId: string, etcdExtra?: Record<string, unknown>) => (proxies[nodeId] = await startHarness(configFor(nodeId, etcdExtra)));
  const P = (n: string) => proxies[n]!;
  const cp = (n: string) => P(n).proxy.control!;
  const admin = (n: string) => adminClient(() => P(n).proxy.adminPort!, ops);
  const encrypt = (n: string, key = 'k1') => xksCall(P(n), `/a/kms/xks/v1/keys/${key}/encrypt`, { requestMetadata: md('Encrypt'), plaintext: b64(Buffer.from('hello')), encryptionAlgorithm: 'AES_GCM' }, { cred });
  const health = (n: string) => xksCall(P(n), '/a/kms/xks/v1/health', { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, { cred });
  const refuses = async (n: string) => (await encrypt(n)).json?.errorName === 'InvalidStateException';
  async function liftVia(scope: string, first: string, second: string): Promise<void> {
    const r1 = await admin(first)('alice', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'resolved' });
    expect(r1.status, JSON.stringify(r1.json)).to.equal(200);
    expect(r1.json.lifted).to.equal(false);
    const r2 = await admin(second)('bob', 'POST', '/admin/v1/kill-switch/approve-lift', { scope, reason: 'agreed' });
    expect(r2.status, JSON.stringify(r2.json)).to.equal(200);
    expect(r2.json.lifted, JSON.stringify(r2.json)).to.equal(true);
  }

  before(async function () {
    etcd = await startEtcdCluster(3);
    token = createTestToken();
    for (const label of ['xks-health', 'k1', 'k2']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    cred = writeCredential(path.join(token.dir, 'creds'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'] });
    prefix = `/xks-test/${crypto.randomBytes(4).toString('hex')}/`;
    await start('A');
    await start('B');
  });
  after(async () => {
    for (const h of Object.values(proxies)) await h.close();
    await etcd?.stop();
    token?.cleanup();
  });

  it('engage on A: returns once A and B acknowledged, and B refuses at once; approvals on A and B reach the quorum', async () => {
    expect((await encrypt('B')).status).to.equal(200);
    const t0 = process.hrtime.bigint();
    const appliedOnB = waitEvent<{ own: boolean }>(cp('B'), 'applied', (a) => !a.own, 5000).then(() => process.hrtime.bigint());
    const r = await admin('A')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'fleet test' });
    expect(r.status, JSON.stringify(r.json)).to.equal(200);
    expect(r.json.fleet.acknowledged).to.have.members(['A', 'B']);
    expect(r.json.fleet.missing).to.deep.equal([]);
    // The guarantee: once the engage returned "all acknowledged", B starts no new operation.
    const onB = await encrypt('B');
    expect(onB.json.errorName, onB.text).to.equal('InvalidStateException');
    console.log(`      engage on A -> applied on B: ${(Number((await appliedOnB) - t0) / 1e6).toFixed(1)} ms; engage call returned after ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
    // Audit: A records the change with its etcd revision and who acknowledged; B the revision it applied.
    await until(async () => P('A').appLog().includes(`etcd revision ${r.json.revision}, acknowledged by A, B`), 5000, 'A audited the engage with its revision');
    await until(async () => P('B').appLog().includes(`applied from etcd revision ${r.json.revision}`), 5000, 'B audited the revision it applied');
    await liftVia('proxy', 'A', 'B');
    await until(async () => (await encrypt('A')).status === 200 && (await encrypt('B')).status === 200, 5000, 'A and B serve after the lift');
  });

  it('a proxy with two workers is one proxy of the fleet: an engage on A returns once each of its workers acknowledged, and none of them serves', async () => {
    // `xks-proxy serve` with server.workers 2, as in production: a primary (admin API) and two
    // worker processes, each a member of its own (W, W#w1, W#w2).
    const tlsDir = path.join(token.dir, 'w-tls');
    fs.mkdirSync(tlsDir, { mode: 0o700 });
    const tls = makeTlsCert(tlsDir);
    const file = path.join(token.dir, 'fleet-w.json');
    fs.writeFileSync(file, JSON.stringify({ ...configFor('W'), server: { host: '127.0.0.1', port: 0, workers: 2, tls, overload: { maxEventLoopLagMs: 1000 } }, log: { requestLogStdout: false } }));
    const w = await spawnServe(file, { cluster: true });
    try {
      const ca = fs.readFileSync(tls.certFile);
      const encryptOnW = async (): Promise<{ status: number; errorName?: string }> => {
        const body = JSON.stringify({ requestMetadata: md('Encrypt'), plaintext: b64(Buffer.from('hello')), encryptionAlgorithm: 'AES_GCM' });
        const p = '/a/kms/xks/v1/keys/k1/encrypt';
        const headers = await signedHeaders({ host: `localhost:${w.port}`, path: p, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
        return new Promise((resolve, reject) => {
          // A fresh connection each: the requests spread over both workers.
          const req = https.request({ host: 'localhost', port: w.port, method: 'POST', path: p, headers, ca, agent: false }, (res) => collectResponse(res).then((r) => resolve({ status: r.status, errorName: r.json?.errorName }), reject));
          req.on('error', reject);
          req.end(body);
        });
      };
      expect((await encryptOnW()).status).to.equal(200);
      const members = async () => (JSON.parse((await promisify(execFile)(process.execPath, [CLI, 'fleet', 'status', '--json', '--config', cliConfig()])).stdout) as { members: { nodeId: string; proxy?: string; health: string }[] }).members;
      await until(async () => (await members()).filter((m) => m.proxy === 'W').map((m) => m.nodeId).sort().join() === 'W,W#w1,W#w2', 10_000, 'W and both its workers are members');

      const r = await admin('A')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'fleet with workers' });
      expect(r.status, JSON.stringify(r.json)).to.equal(200);
      expect(r.json.fleet.acknowledged).to.include.members(['W', 'W#w1', 'W#w2']);
      expect(r.json.fleet.missing).to.deep.equal([]);
      // Once the engage returned, no worker of W starts an HSM operation.
      const blocked = await Promise.all(Array.from({ length: 10 }, () => encryptOnW()));
      expect(blocked.map((b) => b.errorName)).to.deep.equal(Array(10).fill('InvalidStateException'));
      await liftVia('proxy', 'A', 'B');
      await until(async () => (await encryptOnW()).status === 200, 10_000, 'W serves after the lift');
      // Lifted (a proxy-scope block also refuses GetHealthStatus): xksProxyFleetSize counts proxies (W once, for its two workers), not processes.
      const proxies = new Set((await members()).map((m) => m.proxy ?? m.nodeId));
      expect(proxies.has('W')).to.equal(true);
      await until(async () => (await health('A')).json?.xksProxyFleetSize === proxies.size, 10_000, `fleet size ${proxies.size} (proxies ${[...proxies].join(', ')}) on A`);
    } finally {
      w.child.kill('SIGTERM');
      await w.exited;
    }
  });

  it('a token used on A is refused as a replay on B', async () => {
    const tok = await ops.token('alice');
    expect((await adminRaw(P('A').proxy.adminPort!, 'GET', '/admin/v1/state', tok)).status).to.equal(200);
    const again = await adminRaw(P('B').proxy.adminPort!, 'GET', '/admin/v1/state', tok);
    expect(again.status).to.equal(401);
    // The answer is generic; the log says why.
    expect(P('B').appLog()).to.match(/jti already used \(replay, on this or another member of the fleet\)/);
  });

  it('concurrent engages on A and B lose no update; both members end with the same state', async () => {
    const rs = await Promise.all([
      admin('A')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'key:a/k1', reason: 'race 1' }),
      admin('B')('bob', 'POST', '/admin/v1/kill-switch/engage', { scope: 'key:a/k2', reason: 'race 2' }),
      admin('A')('bob', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'race 3' }),
    ]);
    for (const r of rs) expect(r.status, JSON.stringify(r.json)).to.equal(200);
    const scopes = (n: string) => cp(n).publicState().blocks.map((b) => b.scope).sort();
    expect(scopes('A')).to.deep.equal(['key:a/k1', 'key:a/k2', 'keystore:a']);
    await until(async () => cp('B').publicState().generation === cp('A').publicState().generation, 5000, 'B at A\'s generation');
    expect(scopes('B')).to.deep.equal(scopes('A'));
    // Concurrent lifts through both members: every approval counted, all three lifted.
    await Promise.all([liftVia('key:a/k1', 'A', 'B'), liftVia('key:a/k2', 'B', 'A')]);
    await liftVia('keystore:a', 'B', 'A');
    await until(async () => cp('A').publicState().blocks.length === 0 && cp('B').publicState().blocks.length === 0, 5000, 'no blocks on A and B');
  });

  it('a proxy started during a block starts blocked; GetHealthStatus counts the live healthy members', async () => {
    const r = await admin('B')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'before C starts' });
    expect(r.status).to.equal(200);
    await start('C');
    expect((await encrypt('C')).json.errorName).to.equal('InvalidStateException');
    await liftVia('keystore:a', 'C', 'A');
    await until(async () => (await encrypt('C')).status === 200, 5000, 'C serves after the lift');
    await until(async () => (await health('A')).json?.xksProxyFleetSize === 3, 10_000, 'fleet size 3 on A');
    const metrics = await adminRaw(P('A').proxy.adminPort!, 'GET', '/metrics', await ops.token('alice'));
    expect(metrics.status).to.equal(200);
    expect(metrics.text).to.match(/^xks_fleet_members 3$/m);
    expect(metrics.text).to.match(/^xks_fleet_members_healthy 3$/m);
    expect(metrics.text).to.match(/^xks_control_store_up 1$/m);
    expect(metrics.text).to.match(/^xks_control_applied_revision [1-9]\d*$/m);
    await P('C').close();
    delete proxies.C;
    await until(async () => (await health('A')).json?.xksProxyFleetSize === 2, 10_000, 'fleet size 2 on A once C left');
  });

  it('emergency engage from the CLI writes to etcd directly (no admin API): every member refuses; fleet status lists them', async () => {
    const configFile = cliConfig();
    const r = await promisify(execFile)(process.execPath, [CLI, 'killswitch', 'emergency-engage', '--scope', 'proxy', '--reason', 'admin APIs unreachable', '--operator', 'carol', '--config', configFile]);
    expect(JSON.parse(r.stdout).engaged).to.equal(true);
    expect(r.stderr).to.match(/written to etcd/);
    await until(async () => (await refuses('A')) && (await refuses('B')), 5000, 'A and B refuse after the emergency engage');
    const st = await promisify(execFile)(process.execPath, [CLI, 'fleet', 'status', '--json', '--config', configFile]);
    const members = JSON.parse(st.stdout).members as Array<{ nodeId: string; stalenessMs: unknown }>;
    expect(members.map((m) => m.nodeId)).to.deep.equal(['A', 'B']);
    // Each live member publishes when it last confirmed the state (the figure itself depends on timing).
    for (const m of members) expect(m.stalenessMs, m.nodeId).to.be.a('number').and.at.least(0);
    console.log(`      fleet status staleness: ${members.map((m) => `${m.nodeId} ${String(m.stalenessMs)} ms`).join(', ')}`);
    await liftVia('proxy', 'B', 'A');
    await until(async () => (await encrypt('A')).status === 200 && (await encrypt('B')).status === 200, 5000, 'A and B serve after the lift');
  });

  it('a member whose lease is lost (revoked in etcd) rejoins by itself, and engages wait for it again', async () => {
    const c = new Etcd3({ hosts: etcd.endpoints });
    try {
      const old = (await c.get(`${prefix}members/A`).exec()).kvs[0]!.lease;
      await c.leaseClient.leaseRevoke({ ID: old });
      await until(async () => {
        const k = (await c.get(`${prefix}members/A`).exec()).kvs[0];
        return k !== undefined && k.lease !== old;
      }, 10_000, 'A back in the fleet on a new lease');
      expect(P('A').appLog()).to.include('fleet membership lease lost');
      const r = await admin('B')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'keystore:a', reason: 'after the rejoin' });
      expect(r.json.fleet.acknowledged).to.have.members(['A', 'B']);
      expect(await refuses('A')).to.equal(true);
      await liftVia('keystore:a', 'A', 'B');
      await until(async () => (await encrypt('A')).status === 200, 5000, 'A serves after the lift');
    } finally {
      c.close();
    }
  });

  it('one etcd member killed: the fleet keeps working (engage on B, A refuses, lift)', async () => {
    await etcd.kill(0);
    const r = await admin('B')('alice', 'POST', '/admin/v1/kill-switch/engage', { scope: 'proxy', reason: 'one etcd member down' });
    expect(r.status, JSON.stringify(r.json)).to.equal(200);
    expect(r.json.fleet.missing).to.deep.equal([]);
    expect(await refuses('A')).to.equal(true);
    await liftVia('proxy', 'A', 'B');
    await until(async () => (await encrypt('A')).status === 200, 5000, 'A serves');
    expect(cp('A').isFailClosed()).to.equal(false);
    etcd.restart(0);
    await etcd.waitHealthy();
  });

  it('etcd quorum lost: every proxy fails closed within the staleness bound (not ready, audited) and recovers when it returns', async () => {
    expect((await encrypt('A')).status).to.equal(200);
    // K chose availability: it keeps the last known state for up to a minute past the bound.
    await start('K', { keepLastKnownMs: 60_000, leaseTtlSeconds: 70 });
    const t0 = Date.now();
    const staleA = waitEvent(cp('A'), 'stale', () => true, 20_000);
    const staleB = waitEvent(cp('B'), 'stale', () => true, 20_000);
    await etcd.kill(1);
    await etcd.kill(2);
    await Promise.all([staleA, staleB]);
    console.log(`      quorum lost -> both proxies fail closed after ${Date.now() - t0} ms (maxStalenessMs ${MAX_STALENESS_MS})`);
    await until(async () => P('K').appLog().includes('serving with the last known state'), 10_000, 'K past maxStalenessMs, keeping the last known state');
    expect((await encrypt('K')).status).to.equal(200);
    expect(cp('K').isFailClosed()).to.equal(false);
    for (const n of ['A', 'B']) {
      const r = await encrypt(n);
      expect(r.json.errorName, r.text).to.equal('InvalidStateException');
      expect((await rawRequest(P(n), { method: 'GET', path: '/healthz/ready' })).status).to.equal(503);
    }
    const t1 = Date.now();
    const back = Promise.all(['A', 'B'].map((n) => waitEvent(cp(n), 'reload', (x: { failClosed?: string }) => x.failClosed === undefined, 30_000)));
    etcd.restart(1);
    etcd.restart(2);
    await back;
    console.log(`      quorum back -> both proxies serve again after ${Date.now() - t1} ms`);
    for (const n of ['A', 'B']) {
      expect((await encrypt(n)).status).to.equal(200);
      expect((await rawRequest(P(n), { method: 'GET', path: '/healthz/ready' })).status).to.equal(200);
    }
    expect(P('A').appLog()).to.include('failing closed');
    await until(async () => P('A').appLog().includes('control-state.stale') && P('A').appLog().includes('control-state.recovered'), 5000, 'A audited the stale state and the recovery (admin actions go to the app log without an audit log)');
  });

  // Leaves the fleet's state untrusted: the next test repairs it.
  it('a state written into etcd without the HSM key (an etcd credential holder) is tampering: every member fails closed, not ready, audited naming etcd and the revision', async () => {
    const c = new Etcd3({ hosts: etcd.endpoints });
    try {
      const key = `${prefix}control/state`;
      const forged = JSON.parse((await c.get(key).string())!);
      forged.body.policies = {};
      forged.generation += 1;
      const tampered = Promise.all(['A', 'B'].map((n) => waitEvent(cp(n), 'tamper', () => true, 10_000)));
      await c.put(key).value(JSON.stringify(forged));
      await tampered;
      for (const n of ['A', 'B']) {
        expect(await refuses(n)).to.equal(true);
        expect((await rawRequest(P(n), { method: 'GET', path: '/healthz/ready' })).status).to.equal(503);
        expect(P(n).appLog()).to.include('control state TAMPERING detected');
      }
      await until(async () => P('B').appLog().includes('control-state.tamper'), 5000, 'B audited the tampering');
      const forgedRevision = (await c.get(key).exec()).kvs[0]!.mod_revision;
      for (const n of ['A', 'B']) {
        const rec = adminActions(P(n).appLog(), 'control-state.tamper').at(-1)!;
        // The audit record carries the channel at the end of its detail ("; via <channel>").
        expect(rec.detail, JSON.stringify(rec)).to.match(/; via etcd$/);
        expect(rec.reason).to.match(/in etcd does not authenticate/);
        expect(rec.detail).to.include(`${key} at revision ${forgedRevision}`);
      }
    } finally {
      c.close();
    }
  });

  it('killswitch repair replaces the tampered state in etcd: every member applies it and stays blocked; the lift quorum reopens the fleet', async () => {
    expect(await refuses('A')).to.equal(true);
    const trusted = Promise.all(['A', 'B'].map((n) => waitEvent(cp(n), 'reload', (x: { failClosed?: string }) => x.failClosed === undefined, 20_000)));
    const r = await promisify(execFile)(process.execPath, [CLI, 'killswitch', 'repair', '--operator', 'carol', '--reason', 'forged state replaced', '--confirm', '--config', cliConfig()]);
    const out = JSON.parse(r.stdout);
    expect(out.repaired).to.equal(true);
    expect(out.blocks).to.deep.equal(['proxy']);
    expect(r.stderr).to.match(/written to etcd/);
    await trusted;
    for (const n of ['A', 'B']) {
      expect(cp(n).tamperReason()).to.equal(undefined);
      // Trusted again, but blocked by the repair's proxy-scope block until the quorum lifts it.
      const e = await encrypt(n);
      expect(e.json.errorName, e.text).to.equal('InvalidStateException');
      expect(cp(n).publicState().blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
      await until(async () => P(n).appLog().includes('"action":"kill-switch.repair"'), 5000, `${n} audited the repair it applied`);
    }
    await liftVia('proxy', 'A', 'B');
    await until(async () => (await encrypt('A')).status === 200 && (await encrypt('B')).status === 200, 5000, 'A and B serve after the lift');
  });
});
