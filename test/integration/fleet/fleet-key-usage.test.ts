/**
 * Key versions in fleet mode, against a real three-member etcd cluster and two real proxies on one
 * SoftHSM2 token, over real HTTPS: the GCM encryption count of a key version is the fleet's
 * (reserved in etcd block by block), so counts from both proxies add up, the rotation threshold
 * is reached on the fleet total and the hard limit holds for the fleet; and a key version retired
 * with approvals given on different members is gone for both.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { Etcd3 } from 'etcd3';
import { EtcdEncryptionCounter } from '../../../src/control/etcd-encryption-counter';
import { main } from '../../../src/cli/index';
import { createKey } from '../../../src/hsm/key-admin';
import { captureOutput } from '../../helpers/capture-output';
import { listKeyVersions, rotateKey } from '../../../src/hsm/key-version-admin';
import { createSilentLogger } from '../../../src/log/logger';
import { startEtcdCluster, type EtcdCluster } from '../../helpers/etcd-cluster';
import { eventually, sealedOf, xksClient, type Sealed } from '../../helpers/key-version-client';
import { startHarness, writeCredential, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { createStateKey } from '../../helpers/state-hsm';
import { AUDIENCE, adminClient, makeOperators, type Operators } from '../control/admin-helpers';

const BLOCK = 5;
const THRESHOLD = 20;
const LIMIT = 60;

describe('fleet mode: key version counts and retirement across the fleet (real etcd)', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let token: TestToken;
  let cred: Credential;
  let ops: Operators;
  let prefix: string;
  let client: Etcd3;
  const proxies: Record<string, Harness> = {};
  const aad = Buffer.from('fleet aad');

  const start = async (nodeId: string, keyVersions: Record<string, unknown>) =>
    (proxies[nodeId] = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'sum', rotation: { atEncryptions: LIMIT } }, { externalKeyId: 'limit', rotation: { atEncryptions: LIMIT } }, { externalKeyId: 'due' }, { externalKeyId: 'gone' }, { externalKeyId: 'busy' }] }],
      keyVersions: { usageDir: path.join(token.dir, `usage-${nodeId}`), flushIntervalMs: 100, reserveBlock: BLOCK, encryptionLimit: LIMIT, rotation: { atEncryptions: THRESHOLD }, ...keyVersions },
      control: {
        store: 'etcd',
        etcd: { endpoints: etcd.endpoints, prefix, nodeId, leaseTtlSeconds: 4, ackTimeoutMs: 3000 },
        killSwitch: { approvalsRequired: 2 },
        admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile },
      },
    }));
  const c = (n: string) => xksClient(proxies[n]!, cred);
  const fleetCount = async (label: string, version: number) => Number(await client.get(new EtcdEncryptionCounter(client, prefix, 1000, createSilentLogger()).keyOf(label, version)).string());
  const versionOf = (json: any) => (json.ciphertextMetadata === undefined ? 0 : Buffer.from(json.ciphertextMetadata, 'base64').readUInt32BE(1));
  async function encryptOk(n: string, key: string): Promise<any> {
    const r = await c(n).encrypt(key, Buffer.from('data key'), aad);
    expect(r.status, r.text).to.equal(200);
    return r.json;
  }

  before(async function () {
    etcd = await startEtcdCluster(3);
    client = new Etcd3({ hosts: etcd.endpoints });
    token = createTestToken();
    for (const label of ['xks-health', 'sum', 'limit', 'due', 'gone', 'busy']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    cred = writeCredential(path.join(token.dir, 'creds'));
    ops = await makeOperators(token.dir, { alice: ['operator'], bob: ['operator'] });
    prefix = `/xks-test/${crypto.randomBytes(4).toString('hex')}/`;
    // A may rotate by itself; B reads the versions only every hour (it learns of changes from
    // ciphertextMetadata naming a version it does not know, or from a missing object).
    await start('A', { autoRotate: true, rescanIntervalMs: 100 });
    await start('B', { rescanIntervalMs: 3_600_000 });
  });
  after(async () => {
    for (const h of Object.values(proxies)) await h.close();
    client?.close();
    await etcd?.stop();
    token?.cleanup();
  });

  it('encryptions on A and B add up in one fleet count, reserved block by block', async () => {
    for (let i = 0; i < 7; i++) await encryptOk('A', 'sum');
    for (let i = 0; i < 4; i++) await encryptOk('B', 'sum');
    // A holds two blocks (10 for its 7), B one (5 for its 4): reserved before use, an upper bound.
    expect(await fleetCount('sum', 0)).to.equal(15);
    // Each proxy reports the fleet's count as of its last reservation.
    await encryptOk('B', 'sum');
    await encryptOk('B', 'sum');
    expect(await fleetCount('sum', 0)).to.equal(20);
    const onB = (await proxies.B!.proxy.versions.statusOf({ label: 'sum' } as never)).versions.find((v) => v.version === 0)!;
    expect(onB.usage.encryptions).to.equal(20);
    // Concurrent requests on A share one reservation at a time: A's 3 spare, then 2 blocks for 9.
    await Promise.all(Array.from({ length: 12 }, () => encryptOk('A', 'sum')));
    expect(await fleetCount('sum', 0)).to.equal(30);
    // The CLI on either member's configuration reads the fleet's count from etcd.
    const listed = await captureOutput(() => main(['keys', 'versions', '--key-store', 'ks', '--key-id', 'sum', '--json', '--config', proxies.B!.configFile]));
    expect(listed.code, listed.err).to.equal(0);
    expect(JSON.parse(listed.out)).to.deep.include({ encryptionsFleetWide: true });
    expect(JSON.parse(listed.out).versions[0]).to.include({ version: 0, encryptions: 30 });
  });

  it('the rotation threshold is reached on the fleet total: A rotates after fewer encryptions of its own than the threshold', async () => {
    let onA = 0;
    for (; onA < 8; onA++) expect(versionOf(await encryptOk('A', 'due'))).to.equal(0);
    for (let i = 0; i < 12; i++) expect(versionOf(await encryptOk('B', 'due'))).to.equal(0);
    // A's next reservation reads the fleet's 25 (>= 20): it rotates, though it encrypted 8 + 3 times.
    for (let i = 0; i < 3; i++, onA++) await encryptOk('A', 'due');
    await proxies.A!.proxy.versions.rotationsSettled();
    expect(versionOf(await encryptOk('A', 'due'))).to.equal(1);
    onA++;
    expect(onA).to.be.below(THRESHOLD);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'due')).map((v) => v.version)).to.deep.equal([1]);
    // 10 (A) + 15 (B) + 5 (A's reservation that read 25) under version 0.
    expect(await fleetCount('due', 0)).to.equal(30);
  });

  it('the hard limit holds for the fleet: A and B together never encrypt more than encryptionLimit times under one version', async () => {
    // Key "limit" rotates only at the limit itself. A (autoRotate) moves on to version 1 there;
    // B (no autoRotate, and its version list is an hour old) keeps asking for version 0 and is refused.
    let underV0 = 0;
    let aMovedOn = false;
    let bRefused = false;
    for (let i = 0; i < 4 * LIMIT && !bRefused; i++) {
      const n = aMovedOn || i % 2 === 0 ? 'B' : 'A';
      const r = await c(n).encrypt('limit', Buffer.from('x'), aad);
      if (r.status === 200 && versionOf(r.json) === 0) underV0++;
      else if (r.status === 200) aMovedOn = true;
      else {
        expect(r.json.errorName, r.text).to.equal('InvalidStateException');
        expect(n).to.equal('B');
        bRefused = true;
      }
    }
    // Never more than the limit; at most one unspent block (A's, when it moved on) short of it.
    expect(underV0).to.be.at.most(LIMIT);
    expect(underV0).to.be.at.least(LIMIT - BLOCK);
    expect(bRefused, 'B refuses once the fleet reached the limit').to.equal(true);
    expect(await fleetCount('limit', 0)).to.equal(LIMIT);
  });

  it('the quiet period counts every member: a version decrypted on B only is refused for retirement on A', async () => {
    const s0 = sealedOf(await encryptOk('A', 'busy'));
    await rotateKey(token.hsmConfig, token.pin, 'busy');
    expect((await c('B').decrypt('busy', s0, aad)).status).to.equal(200);
    // B publishes its decrypts on its flush interval (100 ms here).
    const counter = new EtcdEncryptionCounter(client, prefix, 1000, createSilentLogger());
    const published = await eventually(async () => (await counter.decryptsOf('busy', 0)).find((d) => d.nodeId === 'B'), "B's decrypt published");
    expect(published.decrypts).to.equal(1);
    const r = await adminClient(() => proxies.A!.proxy.adminPort!, ops)('alice', 'POST', '/admin/v1/key-versions/retire', { keyStore: 'ks', externalKeyId: 'busy', version: 0, reason: 'looks unused from A' });
    expect(r.status, r.text).to.equal(409);
    expect(r.json.message).to.match(/decrypted 1 times, the last at .* on member B, within keyVersions.retireQuietDays/);
    expect((await c('A').metadata('busy')).status).to.equal(200);
  });

  it('a version retired with approvals on A and B is gone for both: InvalidCiphertextException on B, whose version list predates it', async () => {
    const s0: Sealed = sealedOf(await encryptOk('B', 'gone'));
    await rotateKey(token.hsmConfig, token.pin, 'gone');
    const s1 = await eventually(async () => {
      const j = await encryptOk('A', 'gone');
      return versionOf(j) === 1 ? sealedOf(j) : undefined;
    }, 'A encrypts with version 1');
    // B learns of version 1 from the metadata, and caches version 0's handle as before.
    expect((await c('B').decrypt('gone', s1, aad)).status).to.equal(200);
    const admin = (n: string, as: string) => adminClient(() => proxies[n]!.proxy.adminPort!, ops)(as, 'POST', '/admin/v1/key-versions/retire', { keyStore: 'ks', externalKeyId: 'gone', version: 0, reason: 'fleet retire', forceRecentUse: true });
    const first = await admin('A', 'alice');
    expect(first.status, first.text).to.equal(202);
    const second = await admin('B', 'bob');
    expect(second.status, second.text).to.equal(200);
    expect(second.json.approvers).to.have.members(['alice', 'bob']);
    for (const n of ['A', 'B']) {
      const d = await c(n).decrypt('gone', s0, aad);
      expect(d.json?.errorName, `${n}: ${d.text}`).to.equal('InvalidCiphertextException');
      expect((await c(n).decrypt('gone', s1, aad)).status, n).to.equal(200);
    }
  });
});

describe('fleet mode: the fleet encryption count while etcd has no quorum (real etcd)', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let token: TestToken;
  let cred: Credential;
  let prefix: string;
  const proxies: Record<string, Harness> = {};
  const aad = Buffer.from('outage aad');

  const start = async (nodeId: string, etcdExtra: Record<string, unknown>) =>
    (proxies[nodeId] = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k' }] }],
      keyVersions: { reserveBlock: 3 },
      control: { store: 'etcd', etcd: { endpoints: etcd.endpoints, prefix, nodeId, ackTimeoutMs: 3000, ...etcdExtra }, killSwitch: { approvalsRequired: 2 } },
    }));
  const encrypt = (n: string) => xksClient(proxies[n]!, cred).encrypt('k', Buffer.from('x'), aad);
  const fleetCount = async () => {
    const c = new Etcd3({ hosts: etcd.endpoints });
    try {
      return Number(await c.get(new EtcdEncryptionCounter(c, prefix, 1000, createSilentLogger()).keyOf('k', 0)).string());
    } finally {
      c.close();
    }
  };

  before(async function () {
    etcd = await startEtcdCluster(3);
    token = createTestToken();
    for (const label of ['xks-health', 'k']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    cred = writeCredential(path.join(token.dir, 'creds'));
    prefix = `/xks-test/${crypto.randomBytes(4).toString('hex')}/`;
    // S fails closed on the control state only after 30 s (its etcd calls give up after 15 s), so that what refuses its Encrypt
    // below is the count; L chose availability (keepLastKnownMs).
    await start('S', { maxStalenessMs: 30_000, leaseTtlSeconds: 40 });
    await start('L', { maxStalenessMs: 1500, keepLastKnownMs: 60_000, leaseTtlSeconds: 70 });
  });
  after(async () => {
    for (const h of Object.values(proxies)) await h.close();
    await etcd?.stop();
    token?.cleanup();
  });

  it('a spent block cannot be renewed: Encrypt is refused (never uncounted), unless keepLastKnownMs lends one block, added to the fleet count once etcd is back', async () => {
    for (const n of ['S', 'L']) for (let i = 0; i < 3; i++) expect((await encrypt(n)).status).to.equal(200);
    expect(await fleetCount()).to.equal(6);
    await etcd.kill(1);
    await etcd.kill(2);
    // L: one borrowed block of 3, then refused until it is paid.
    for (let i = 0; i < 3; i++) {
      const r = await encrypt('L');
      expect(r.status, r.text).to.equal(200);
    }
    const fourth = await encrypt('L');
    expect(fourth.json?.errorName, fourth.text).to.equal('InternalException');
    expect(proxies.L!.appLog()).to.include('fleet encryption count unreachable: encrypting on one block');
    // S (fail closed, the default): no block, no Encrypt.
    const s = await encrypt('S');
    expect(s.json?.errorName, s.text).to.equal('InternalException');
    expect(proxies.S!.appLog()).to.match(/cannot reserve encryptions of version 0 of key \\"k\\" in the fleet count/);
    etcd.restart(1);
    etcd.restart(2);
    await etcd.waitHealthy(30_000);
    // L's next reservation pays its 3 borrowed encryptions and takes a new block: 6 + 3 + 3.
    await eventually(async () => ((await encrypt('L')).status === 200 ? true : undefined), 'L encrypts again once etcd answers', 400);
    expect(await fleetCount()).to.equal(12);
  });
});
