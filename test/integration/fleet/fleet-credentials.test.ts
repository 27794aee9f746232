/**
 * SigV4 credentials across the fleet (docs/fleet.md "Credentials across the fleet"), against a real
 * three-member etcd cluster, real HTTPS proxies in this process on one SoftHSM2 token (the demo's
 * shared token), requests signed by the independent signer: a credential made on one member works
 * on every member without a file copy, its removal reaches every member, and a value in etcd that
 * does not authenticate in the HSM is refused while the others keep working. No secret in etcd or
 * in any log.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Etcd3 } from 'etcd3';
import { generateAccessKeyId } from '../../../src/auth/credentials';
import { ConfigError, parseConfig } from '../../../src/config/load';
import type { AdminActionRecord } from '../../../src/admin/actions';
import { KeyStoreRegistry } from '../../../src/auth/key-stores';
import { XksError } from '../../../src/errors/xks-error';
import { FleetCredentials } from '../../../src/control/fleet-credentials';
import { createKey } from '../../../src/hsm/key-admin';
import { openPkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { startEtcdCluster, type EtcdCluster } from '../../helpers/etcd-cluster';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { createStateKey } from '../../helpers/state-hsm';
import { until } from '../../helpers/until';
import { AUDIENCE, adminClient, makeOperators, type Operators } from '../control/admin-helpers';

const WRAP_KEY = 'xks-credential-wrap';
const cli = path.resolve(__dirname, '../../../src/cli/index.js');
const run = promisify(execFile);

describe('fleet credentials: sealed in the HSM, shared through a real etcd cluster', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let etcdClient: Etcd3;
  let token: TestToken;
  let ops: Operators;
  let prefix: string;
  let cliConfig: string;
  let fileCred: Credential;
  const proxies: Record<string, Harness> = {};
  /** Every secret a test made: none may show in etcd or in a log. */
  const secrets: string[] = [];

  const configFor = (nodeId: string) => ({
    hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
    keyStores: [
      { name: 'a', pathPrefix: '/a', fleetCredentials: true, keys: [{ externalKeyId: 'k1' }] },
      { name: 'b', pathPrefix: '/b', fleetCredentials: true, keys: [{ externalKeyId: 'k1' }] },
      // Files and the fleet together (one folder shared by the members here, as on one host).
      { name: 'c', pathPrefix: '/c', fleetCredentials: true, credentialsDir: path.join(token.dir, 'creds-c'), keys: [{ externalKeyId: 'k1' }] },
    ],
    control: {
      store: 'etcd',
      etcd: { endpoints: etcd.endpoints, prefix, nodeId, maxStalenessMs: 1500, leaseTtlSeconds: 4, ackTimeoutMs: 3000 },
      admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile },
    },
  });
  const P = (n: string) => proxies[n]!;
  const admin = (n: string) => adminClient(() => P(n).proxy.adminPort!, ops);
  const encrypt = (n: string, cred: Credential, ks = 'a') =>
    xksCall(P(n), `/${ks}/kms/xks/v1/keys/k1/encrypt`, { requestMetadata: { awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() }, plaintext: Buffer.from('hello').toString('base64'), encryptionAlgorithm: 'AES_GCM' }, { cred });
  const works = async (n: string, cred: Credential, ks = 'a') => (await encrypt(n, cred, ks)).status === 200;
  const refused = async (n: string, cred: Credential, ks = 'a') => (await encrypt(n, cred, ks)).json?.errorName === 'AuthenticationFailedException';
  const credKey = (ks: string, akid: string) => `${prefix}credentials/${ks}/${akid}`;

  /** A credential made through a member's admin API (the KMS proxy configuration it answers). */
  async function addVia(n: string, ks = 'a'): Promise<Credential & { revision: number }> {
    const r = await admin(n)('alice', 'POST', `/admin/v1/key-stores/${ks}/credentials`, { reason: 'rotation' });
    expect(r.status, r.text).to.equal(201);
    const c = r.json.kmsProxyConfiguration.XksProxyAuthenticationCredential;
    expect(r.json.kmsProxyConfiguration.XksProxyUriPath).to.equal(`/${ks}/kms/xks/v1`);
    secrets.push(c.RawSecretAccessKey);
    return { accessKeyId: c.AccessKeyId, secret: c.RawSecretAccessKey, revision: r.json.revision };
  }

  before(async function () {
    etcd = await startEtcdCluster(3);
    etcdClient = new Etcd3({ hosts: etcd.endpoints });
    token = createTestToken();
    for (const label of ['xks-health', 'k1', WRAP_KEY]) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    ops = await makeOperators(token.dir, { alice: ['operator'] });
    fileCred = writeCredential(path.join(token.dir, 'creds-c'));
    secrets.push(fileCred.secret);
    prefix = `/xks-test/${crypto.randomBytes(4).toString('hex')}/`;
    cliConfig = path.join(token.dir, 'fleet-cli.json');
    fs.writeFileSync(cliConfig, JSON.stringify({ ...configFor('cli'), server: { host: '127.0.0.1', port: 0, plainHttp: true }, log: { requestLogStdout: false } }));
    proxies.A = await startHarness(configFor('A'));
    proxies.B = await startHarness(configFor('B'));
  });
  after(async () => {
    for (const h of Object.values(proxies)) await h.close();
    etcdClient?.close();
    await etcd?.stop();
    token?.cleanup();
  });

  it('a credential made through A\'s admin API works on B without any file copy; etcd holds only ciphertext; both members audit it with the etcd revision', async () => {
    const t0 = process.hrtime.bigint();
    const c = await addVia('A');
    const t1 = process.hrtime.bigint();
    // B applies it from its watch, in this process: checked on every turn of the event loop, for a
    // figure that is printed, not asserted (bounded: 5 s).
    const deadline = Date.now() + 5000;
    while (!P('B').proxy.registry.byName('a')!.accessKeyIds().includes(c.accessKeyId) && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    const t2 = process.hrtime.bigint();
    const ms = (a: bigint, b: bigint) => (Number(b - a) / 1e6).toFixed(1);
    console.log(`      add on A returned after ${ms(t0, t1)} ms; B had the credential ${ms(t1, t2)} ms later`);
    // Active on A when the call returns.
    expect(await works('A', c)).to.equal(true);
    expect(await works('B', c)).to.equal(true);
    const listed = await admin('B')('alice', 'GET', '/admin/v1/key-stores');
    expect(listed.json.keyStores.find((k: { name: string }) => k.name === 'a').fleetAccessKeyIds).to.deep.equal([c.accessKeyId]);
    const raw = (await etcdClient.get(credKey('a', c.accessKeyId)).string())!;
    const sealed = JSON.parse(raw);
    expect(sealed).to.include({ format: 'xks-proxy/fleet-credential', version: 1, wrapKeyLabel: WRAP_KEY, createdBy: 'A' });
    expect(sealed.createdAt).to.match(/^\d{4}-\d\d-\d\dT/);
    expect(raw).to.not.include(c.secret);
    expect(Buffer.from(sealed.ciphertext, 'base64').equals(Buffer.from(c.secret))).to.equal(false);
    await until(async () => P('A').appLog().includes(`added ${c.accessKeyId} (etcd revision ${c.revision})`), 5000, 'A audited the add with its revision');
    await until(async () => P('B').appLog().includes('credentials.fleet-add') && P('B').appLog().includes(`applied from etcd revision ${c.revision}`), 5000, 'B audited the revision it applied');
  });

  it('made with the CLI, removed through B\'s admin API: A refuses it at once (AuthenticationFailedException); the last credential cannot be removed', async () => {
    const r = await run(process.execPath, [cli, 'credentials', 'new', '--key-store', 'b', '--config', cliConfig]);
    const made = JSON.parse(r.stdout).XksProxyAuthenticationCredential;
    const c: Credential = { accessKeyId: made.AccessKeyId, secret: made.RawSecretAccessKey };
    secrets.push(c.secret);
    expect(r.stderr).to.match(/stored in etcd .* encrypted in the HSM with key "xks-credential-wrap"/);
    await until(async () => (await works('A', c, 'b')) && (await works('B', c, 'b')), 5000, 'A and B accept the CLI\'s credential');
    // A second one, so that the first is not the key store's last.
    const next = await addVia('B', 'b');
    await until(() => works('A', next, 'b'), 5000, 'A accepts the second credential');
    const del = await admin('B')('alice', 'DELETE', `/admin/v1/key-stores/b/credentials/${c.accessKeyId}`, { reason: 'rotated' });
    expect(del.status, del.text).to.equal(200);
    expect(del.json.remaining).to.deep.equal([next.accessKeyId]);
    await until(() => refused('A', c, 'b'), 5000, 'A refuses the credential removed on B');
    expect(await refused('B', c, 'b')).to.equal(true);
    expect(await works('A', next, 'b')).to.equal(true);
    expect(await etcdClient.get(credKey('b', c.accessKeyId)).string()).to.equal(null);
    await until(async () => P('A').appLog().includes('credentials.fleet-remove'), 5000, 'A audited the removal it applied');
    // The last one: refused through the admin API and the CLI alike; it keeps working.
    const last = await admin('A')('alice', 'DELETE', `/admin/v1/key-stores/b/credentials/${next.accessKeyId}`, { reason: 'oops' });
    expect(last.status).to.equal(409);
    expect(last.json.message).to.match(/refusing to remove the last credential of key store b/);
    const viaCli = await run(process.execPath, [cli, 'credentials', 'remove', '--key-store', 'b', '--access-key-id', next.accessKeyId, '--config', cliConfig]).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(viaCli?.code).to.equal(1);
    expect(viaCli?.stderr).to.match(/refusing to remove the last credential of key store b/);
    expect(await works('B', next, 'b')).to.equal(true);
  });

  it('the CLI removes a fleet credential and lists the fleet\'s access key ids', async () => {
    const c = await addVia('A');
    await until(() => works('B', c), 5000, 'B accepts it');
    const listed = JSON.parse((await run(process.execPath, [cli, 'credentials', 'list', '--json', '--config', cliConfig])).stdout) as { keyStore: string; accessKeyIds: string[] }[];
    expect(listed.find((row) => row.keyStore === 'a')!.accessKeyIds).to.include(c.accessKeyId);
    const r = await run(process.execPath, [cli, 'credentials', 'remove', '--key-store', 'a', '--access-key-id', c.accessKeyId, '--config', cliConfig]);
    expect(r.stderr).to.match(/from etcd \(revision \d+\); every member drops it now/);
    await until(async () => (await refused('A', c)) && (await refused('B', c)), 5000, 'A and B refuse the credential the CLI removed');
  });

  it('a value tampered in etcd (one ciphertext byte flipped) is refused on every member, logged and audited; the other credentials keep working', async () => {
    const good = await addVia('A');
    const victim = await addVia('B');
    await until(async () => (await works('A', victim)) && (await works('B', good)), 5000, 'both credentials on both members');
    const key = credKey('a', victim.accessKeyId);
    const sealed = JSON.parse((await etcdClient.get(key).string())!);
    const ct = Buffer.from(sealed.ciphertext, 'base64');
    ct[0] = ct[0]! ^ 0x01;
    await etcdClient.put(key).value(JSON.stringify({ ...sealed, ciphertext: ct.toString('base64') }));
    await until(async () => (await refused('A', victim)) && (await refused('B', victim)), 5000, 'A and B refuse the tampered credential');
    for (const n of ['A', 'B']) {
      expect(await works(n, good)).to.equal(true);
      expect(P(n).appLog()).to.include('fleet credential REFUSED');
      expect(P(n).appLog()).to.include('does not authenticate under the wrap key');
    }
    await until(async () => P('A').appLog().includes('credentials.fleet-refused'), 5000, 'A audited the refusal');
    // What the alert XksFleetCredentialRefused watches, and the credential age from the sealed creation time.
    const metrics = await P('B').proxy.meter.registry.metrics();
    expect(metrics).to.match(/^xks_fleet_credentials_refused [1-9]\d*$/m);
    expect(metrics).to.match(/^xks_fleet_credentials_accepted [1-9]\d*$/m);
    expect(metrics).to.match(new RegExp(`^xks_sigv4_credential_age_days\\{key_store="a",access_key_id="${good.accessKeyId}"\\} [0-9.e-]+$`, 'm'));
    expect(metrics).to.not.include(`access_key_id="${victim.accessKeyId}"`);
  });

  it('a value copied under another access key id or key store, or naming another wrap key than the fleet\'s, is refused', async () => {
    const c = await addVia('A');
    await until(() => works('B', c), 5000, 'B accepts it');
    const value = (await etcdClient.get(credKey('a', c.accessKeyId)).string())!;
    const otherId = generateAccessKeyId();
    await etcdClient.put(credKey('a', otherId)).value(value);
    await etcdClient.put(credKey('b', c.accessKeyId)).value(value);
    const noKeyId = generateAccessKeyId();
    await etcdClient.put(credKey('a', noKeyId)).value(JSON.stringify({ ...JSON.parse(value), wrapKeyLabel: 'no-such-wrap-key' }));
    for (const n of ['A', 'B']) {
      await until(async () => P(n).appLog().includes(credKey('a', otherId)) && P(n).appLog().includes(credKey('b', c.accessKeyId)) && P(n).appLog().includes(credKey('a', noKeyId)), 5000, `${n} handled the copies`);
      expect(await refused(n, { accessKeyId: otherId, secret: c.secret })).to.equal(true);
      expect(await refused(n, { accessKeyId: noKeyId, secret: c.secret })).to.equal(true);
      expect(await refused(n, c, 'b')).to.equal(true);
      expect(await works(n, c)).to.equal(true);
      expect(P(n).appLog()).to.include('the value names the HSM key \\"no-such-wrap-key\\", not this fleet\'s wrap key');
    }
  });

  it('a member that starts loads every credential before it serves, and refuses the bad ones', async () => {
    const c = await addVia('B');
    await until(() => works('A', c), 5000, 'A accepts it');
    proxies.C = await startHarness(configFor('C'));
    // No wait: loaded before the proxy listens.
    expect(await works('C', c)).to.equal(true);
    expect(P('C').appLog()).to.include('fleet credential REFUSED');
  });

  it('two members removing the key store\'s last two credentials at once: exactly one removal goes through, one credential stays', async () => {
    // Key store b holds one credential (left by the CLI test); one more makes two.
    const extra = await addVia('A', 'b');
    const before = P('A').proxy.registry.byName('b')!.accessKeyIds();
    expect(before).to.have.length(2);
    await until(async () => P('B').proxy.registry.byName('b')!.accessKeyIds().length === 2, 5000, 'B has both');
    const [x, y] = before as [string, string];
    const rs = await Promise.all([admin('A')('alice', 'DELETE', `/admin/v1/key-stores/b/credentials/${x}`, { reason: 'race 1' }), admin('B')('alice', 'DELETE', `/admin/v1/key-stores/b/credentials/${y}`, { reason: 'race 2' })]);
    expect(rs.map((r) => r.status).sort(), rs.map((r) => r.text).join(' | ')).to.deep.equal([200, 409]);
    // (The refused copy from an earlier test is also under credentials/b/: only the two count.)
    const left = Object.keys(await etcdClient.getAll().prefix(`${prefix}credentials/b/`).strings()).map((k) => k.split('/').pop()!).filter((a) => before.includes(a));
    expect(left).to.have.length(1);
    const survivor = left[0]!;
    for (const n of ['A', 'B']) await until(async () => JSON.stringify(P(n).proxy.registry.byName('b')!.accessKeyIds()) === JSON.stringify([survivor]), 5000, `${n} keeps exactly the survivor`);
    if (survivor === extra.accessKeyId) expect(await works('B', extra, 'b')).to.equal(true);
  });

  it('the survivors are part of the removal\'s transaction: two removers that both read before either wrote cannot remove both', async () => {
    // Fault injection: once armed, each remover's first read of the key store's credentials waits
    // until both have read (a barrier around the real client), so both decide on the same view.
    let armed = false;
    let arrived = 0;
    let release!: () => void;
    const bothRead = new Promise<void>((r) => (release = r));
    const withBarrier = (c: Etcd3): Etcd3 => {
      let waited = false;
      const exec = (b: ReturnType<Etcd3['getAll']>) => async () => {
        const res = await b.exec();
        if (armed && !waited) {
          waited = true;
          if (++arrived === 2) release();
          await bothRead;
        }
        return res;
      };
      const getAll = () => {
        const b = c.getAll();
        return new Proxy(b, { get: (t, p, r) => (p === 'exec' ? exec(t) : Reflect.get(t, p, r)) });
      };
      return new Proxy(c, { get: (t, p, r) => (p === 'getAll' ? getAll : Reflect.get(t, p, r)) });
    };
    const hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
    const clients = [new Etcd3({ hosts: etcd.endpoints }), new Etcd3({ hosts: etcd.endpoints })];
    const racePrefix = `${prefix}race/`;
    const keyStores = [{ name: 'r', pathPrefix: '/r', fleetCredentials: true, credentials: [], keys: [], compatibility: 'spec' as const }];
    const members = clients.map((c, i) => new FleetCredentials(withBarrier(c), hsm, { prefix: racePrefix, wrapKeyLabel: WRAP_KEY, nodeId: `m${i}`, log: createSilentLogger(), callMs: 5000 }));
    try {
      const x = (await members[0]!.create('r')).accessKeyId;
      const y = (await members[0]!.create('r')).accessKeyId;
      for (const m of members) await m.load(new KeyStoreRegistry({ keyStores }, createSilentLogger()));
      armed = true;
      const out = await Promise.allSettled([members[0]!.remove('r', x, []), members[1]!.remove('r', y, [])]);
      expect(arrived).to.equal(2);
      expect(out.map((o) => o.status).sort()).to.deep.equal(['fulfilled', 'rejected']);
      const why = out.find((o): o is PromiseRejectedResult => o.status === 'rejected')!.reason as Error;
      expect(why.message).to.match(/refusing to remove the last credential of key store r/);
      expect(Object.keys(await etcdClient.getAll().prefix(`${racePrefix}credentials/r/`).strings())).to.have.length(1);
    } finally {
      for (const m of members) await m.close();
      for (const c of clients) c.close();
      await hsm.close();
    }
  });

  it('a create whose write failed is reported by what etcd holds: committed after all, it is made; not committed, it is an error and nothing is left', async () => {
    // Fault injection around the real client: the write's answer is lost, after the commit
    // (etcd slower than the deadline, a connection broken after the commit) or before it.
    let lose: 'after' | 'before' = 'after';
    const losing = (c: Etcd3): Etcd3 =>
      new Proxy(c, {
        get: (t, p, r) =>
          p === 'if'
            ? (...a: Parameters<Etcd3['if']>) => {
                const b = t.if(...a);
                const proxy: typeof b = new Proxy(b, {
                  get: (bt, bp, br) => {
                    if (bp === 'then') return (...ops: Parameters<typeof b.then>) => (bt.then(...ops), proxy);
                    if (bp === 'commit') return async () => {
                      if (lose === 'after') await bt.commit();
                      throw new Error('connection reset by peer');
                    };
                    return Reflect.get(bt, bp, br);
                  },
                });
                return proxy;
              }
            : Reflect.get(t, p, r),
      });
    const hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
    const client = new Etcd3({ hosts: etcd.endpoints });
    const lostPrefix = `${prefix}lost/`;
    const maker = new FleetCredentials(losing(client), hsm, { prefix: lostPrefix, wrapKeyLabel: WRAP_KEY, nodeId: 'maker', log: createSilentLogger(), callMs: 5000 });
    try {
      const made = await maker.create('r');
      expect(await etcdClient.get(`${lostPrefix}credentials/r/${made.accessKeyId}`).string()).to.be.a('string');
      expect(made.revision).to.be.above(0);
      lose = 'before';
      let err: Error | undefined;
      await maker.create('r').catch((e: Error) => (err = e));
      expect(err?.message).to.equal('connection reset by peer');
      expect(Object.keys(await etcdClient.getAll().prefix(`${lostPrefix}credentials/r/`).strings())).to.deep.equal([`${lostPrefix}credentials/r/${made.accessKeyId}`]);
    } finally {
      await maker.close();
      client.close();
      await hsm.close();
    }
  });

  it('a value the HSM gave no verdict on (a busy pool) is not accepted at first, then read again and accepted', async () => {
    const hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
    const client = new Etcd3({ hosts: etcd.endpoints });
    // Fault injection: the first decrypt answers as a busy session pool does.
    let failures = 1;
    const flaky = {
      encrypt: hsm.encrypt.bind(hsm),
      decrypt: (...a: Parameters<typeof hsm.decrypt>) => (failures-- > 0 ? Promise.reject(new XksError('ThrottlingException', undefined, 'session pool busy')) : hsm.decrypt(...a)),
    };
    const o = { prefix: `${prefix}flaky/`, wrapKeyLabel: WRAP_KEY, log: createSilentLogger(), callMs: 5000 };
    const maker = new FleetCredentials(client, hsm, { ...o, nodeId: 'maker' });
    const member = new FleetCredentials(client, flaky, { ...o, nodeId: 'member' });
    const audited: AdminActionRecord[] = [];
    try {
      const made = await maker.create('r');
      const registry = new KeyStoreRegistry({ keyStores: [{ name: 'r', pathPrefix: '/r', fleetCredentials: true, credentials: [], keys: [], compatibility: 'spec' }] }, createSilentLogger());
      await member.load(registry, (r) => audited.push(r));
      expect(registry.byName('r')!.accessKeyIds()).to.deep.equal([]);
      expect(audited.map((r) => r.action)).to.deep.equal(['credentials.fleet-refused']);
      expect(audited[0]!.detail).to.match(/ThrottlingException from the HSM; not accepted until the HSM answers/);
      await until(async () => registry.byName('r')!.accessKeyIds().includes(made.accessKeyId), 10_000, 'accepted once the HSM answers');
      expect(registry.byName('r')!.secretFor(made.accessKeyId)).to.equal(made.secret);
      expect(audited.map((r) => r.action)).to.deep.equal(['credentials.fleet-refused', 'credentials.fleet-add']);
    } finally {
      await member.close();
      await maker.close();
      client.close();
      await hsm.close();
    }
  });

  it('files keep working next to the fleet: a key store with both takes its new credentials from the fleet, and a file credential counts as the one that remains', async () => {
    expect(await works('A', fileCred, 'c')).to.equal(true);
    expect(await works('B', fileCred, 'c')).to.equal(true);
    const c = await addVia('A', 'c');
    expect(await etcdClient.get(credKey('c', c.accessKeyId)).string()).to.be.a('string');
    await until(() => works('B', c, 'c'), 5000, 'B accepts the fleet credential of c');
    // The file credential remains: the fleet one may go.
    const del = await admin('B')('alice', 'DELETE', `/admin/v1/key-stores/c/credentials/${c.accessKeyId}`, { reason: 'rotated' });
    expect(del.status, del.text).to.equal(200);
    expect(del.json.remaining).to.deep.equal([fileCred.accessKeyId]);
    await until(() => refused('A', c, 'c'), 5000, 'A refuses the removed fleet credential');
    // Now the file credential is the last one.
    const last = await admin('A')('alice', 'DELETE', `/admin/v1/key-stores/c/credentials/${fileCred.accessKeyId}`, { reason: 'oops' });
    expect(last.status).to.equal(409);
    expect(await works('A', fileCred, 'c')).to.equal(true);
  });

  it('fleet credentials survive a configuration reload, and keep arriving while one etcd member is down', async () => {
    const c = await addVia('A');
    await until(() => works('B', c), 5000, 'B accepts it');
    await P('B').proxy.reload();
    expect(await works('B', c)).to.equal(true);
    await etcd.kill(0);
    try {
      const during = await addVia('A');
      await until(() => works('B', during), 10_000, 'B accepts a credential made while an etcd member is down');
    } finally {
      etcd.restart(0);
      await etcd.waitHealthy();
    }
  });

  // Last: reads everything the others wrote.
  it('no secret in clear: neither in any etcd value of the fleet nor in any member\'s logs', async () => {
    expect(secrets.length).to.be.greaterThan(5);
    const all = await etcdClient.getAll().prefix(prefix).strings();
    const etcdText = Object.entries(all).map(([k, v]) => `${k}=${v}`).join('\n');
    const logs = Object.values(proxies).map((h) => h.appLog() + h.requestLog()).join('\n');
    expect(etcdText).to.include(`${prefix}credentials/a/`);
    for (const s of secrets) {
      expect(etcdText).to.not.include(s);
      expect(logs).to.not.include(s);
    }
  });
});

describe('fleet credentials: configuration', () => {
  const base = (control: Record<string, unknown>, ks: Record<string, unknown> = {}) => ({
    server: { plainHttp: true },
    hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'PIN' } },
    keyStores: [{ name: 'a', pathPrefix: '/a', fleetCredentials: true, keys: [{ externalKeyId: 'k1' }], ...ks }],
    control,
  });
  const problems = (raw: unknown): string => {
    try {
      parseConfig(raw, '/tmp/x.yaml');
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    return '';
  };

  it('fleetCredentials with control.store file is a configuration error', () => {
    expect(problems(base({ store: 'file', stateDir: '/tmp/s' }))).to.match(/keyStores\.0\.fleetCredentials: needs control\.store: etcd/);
    expect(problems(base({ store: 'etcd', etcd: { endpoints: ['http://127.0.0.1:2379'] } }))).to.equal('');
  });

  it('the wrap key serves nothing else: an XKS key or the health key named like it is a configuration error', () => {
    const etcd = { store: 'etcd', etcd: { endpoints: ['http://127.0.0.1:2379'], credentialWrapKeyLabel: 'wrap' } };
    expect(problems(base(etcd, { keys: [{ externalKeyId: 'k1', label: 'wrap' }] }))).to.match(/keyStores\.0\.keys\.0: uses the HSM key "wrap"/);
    expect(problems({ ...base(etcd), hsm: { module: '/m.so', tokenLabel: 't', pin: { env: 'PIN' }, healthKeyLabel: 'wrap' } })).to.match(/hsm\.healthKeyLabel: must not be control\.etcd\.credentialWrapKeyLabel/);
  });
});
