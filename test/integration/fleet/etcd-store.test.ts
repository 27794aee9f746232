/**
 * The etcd control store on its own, against a real three-member etcd cluster and the real HSM MAC
 * key: concurrent writers never lose an update, and a state written by someone holding etcd
 * credentials but not the HSM key (a forged value, an old value put back, a deleted key) is
 * refused as tampering, while a missing cluster is a fault.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import { Etcd3, type Watcher } from 'etcd3';
import { createSilentLogger } from '../../../src/log/logger';
import { openPkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import type { HsmBackend } from '../../../src/hsm/backend';
import { hsmStateAuthenticator, type StateAuthenticator } from '../../../src/control/state-auth';
import { ControlPlane } from '../../../src/control/control-plane';
import { EtcdControlStore } from '../../../src/control/etcd-store';
import { EtcdFleet } from '../../../src/control/fleet';
import { applyApproval, applyEngage, applyPolicyApproval, applyPolicySet, applyRepair, emptyState, type StateBody } from '../../../src/control/state-model';
import { validatePolicy, type PolicyDoc } from '../../../src/control/policy';
import { createStateKey } from '../../helpers/state-hsm';
import { startEtcdCluster, type EtcdCluster } from '../../helpers/etcd-cluster';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { StateStore } from '../../../src/control/state-store';
import { controlCommand, fleetCommand } from '../../../src/cli/fleet-commands';
import { writeCredential } from '../../helpers/proxy-harness';
import { waitEvent } from '../../helpers/wait-event';

function sink(): Writable & { text: string } {
  const w = new Writable({
    write(chunk, _enc, cb) {
      w.text += chunk.toString();
      cb();
    },
  }) as Writable & { text: string };
  w.text = '';
  return w;
}

const actor = { operator: 'alice', via: 'admin-api' as const };

describe('etcd control store (real etcd, real HSM MAC)', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let token: TestToken;
  let hsm: HsmBackend;
  let client: Etcd3;
  const stores: EtcdControlStore[] = [];

  const newStore = (prefix: string) => {
    const s = new EtcdControlStore(client, hsmStateAuthenticator(hsm, { hsmKeyLabel: 'xks-control-state', anchorLabel: 'unused-in-etcd-mode' }), { prefix, maxStalenessMs: 1500, keepLastKnownMs: 0, log: createSilentLogger() });
    stores.push(s);
    return s;
  };
  const fresh = () => `/xks-store-test/${crypto.randomBytes(4).toString('hex')}/`;
  /** A configuration file for the CLI commands (migrate, fleet status) with this control section. */
  const cliConfig = (name: string, control: Record<string, unknown>): string => {
    const creds = path.join(token.dir, `${name}-creds`);
    writeCredential(creds);
    const file = path.join(token.dir, `${name}.json`);
    fs.writeFileSync(file, JSON.stringify({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      server: { host: '127.0.0.1', port: 0, plainHttp: true },
      log: { requestLogStdout: false },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: creds, keys: [{ externalKeyId: 'k1' }] }],
      control,
    }));
    return file;
  };
  const engage = (scope: string) => (b: StateBody) => ({ body: applyEngage(b, scope, actor, 'test', Date.now()), result: undefined });

  before(async () => {
    etcd = await startEtcdCluster(3);
    token = createTestToken();
    await createStateKey(token);
    hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
    client = new Etcd3({ hosts: etcd.endpoints });
  });
  after(async () => {
    for (const s of stores) await s.close();
    client?.close();
    await hsm?.close();
    await etcd?.stop();
    token?.cleanup();
  });

  it('initialises a fresh prefix once; a second member reads the same state', async () => {
    const p = fresh();
    const a = newStore(p);
    const b = newStore(p);
    await Promise.all([a.initIfFresh(Date.now()), b.initIfFresh(Date.now())]);
    const ra = await a.read();
    const rb = await b.read();
    expect(ra.ok && rb.ok).to.equal(true);
    if (!ra.ok || !rb.ok) return;
    expect(ra.state.storeId).to.equal(rb.state.storeId);
    expect(ra.state.generation).to.equal(1);
  });

  it('two members writing at once lose no update (transactions on the revision read, retried)', async () => {
    const p = fresh();
    const a = newStore(p);
    const b = newStore(p);
    await a.initIfFresh(Date.now());
    const scopes = Array.from({ length: 12 }, (_, i) => `key:ks/k${i}`);
    await Promise.all(scopes.map((sc, i) => (i % 2 ? a : b).mutate(engage(sc), Date.now)));
    const r = await a.read();
    expect(r.ok).to.equal(true);
    if (!r.ok) return;
    expect(r.state.body.blocks.map((x) => x.scope).sort()).to.deep.equal([...scopes].sort());
    expect(r.state.generation).to.equal(1 + scopes.length);
  });

  it('a forged value (no HSM MAC) is tampering; so is an older value put back, and a deleted key', async () => {
    const p = fresh();
    const a = newStore(p);
    await a.initIfFresh(Date.now());
    await a.mutate(engage('proxy'), Date.now);
    const key = `${p}control/state`;
    const good = await client.get(key).string();
    // An etcd credential holder lifts the block by hand: same envelope, blocks emptied, old MAC.
    const forged = JSON.parse(good!);
    forged.body.blocks = [];
    await client.put(key).value(JSON.stringify(forged));
    const r1 = await a.read();
    expect(r1.ok).to.equal(false);
    if (!r1.ok && !r1.fresh) expect(r1.tamper).to.equal(true);
    // Rollback: an older state, with a valid MAC, put back after a newer one was seen.
    await client.put(key).value(good!);
    const before = good!;
    await a.mutate(engage('keystore:x'), Date.now);
    await client.put(key).value(before);
    const r2 = await a.read();
    expect(r2.ok).to.equal(false);
    if (!r2.ok && !r2.fresh) {
      expect(r2.tamper).to.equal(true);
      expect(r2.reason).to.match(/older than generation/);
    }
    await client.delete().key(key);
    const r3 = await a.read();
    expect(r3.ok).to.equal(false);
    if (!r3.ok && !r3.fresh) {
      expect(r3.tamper).to.equal(true);
      expect(r3.reason).to.match(/missing/);
    }
    // Changes are refused while the state is not trusted.
    let refused: Error | undefined;
    await a.mutate(engage('proxy'), Date.now).catch((e: Error) => (refused = e));
    expect(refused?.message).to.match(/not trusted/);
  });

  it('control migrate --to file copies the fleet\'s state into a fresh state folder with every block, approval and policy, once', async () => {
    const p = fresh();
    const fleet = newStore(p);
    await fleet.initIfFresh(Date.now());
    const policy = (sid: string): PolicyDoc => {
      const v = validatePolicy({ defaultDecision: 'deny', statements: [{ sid, effect: 'allow', conditions: { awsPrincipalArn: ['arn:aws:iam::111122223333:user/Alice'] } }] });
      if (!v.ok) throw new Error(v.errors.join('; '));
      return v.policy;
    };
    const bob = { operator: 'bob', via: 'admin-api' as const };
    const now = Date.now();
    // Blocks at every scope, a pending lift approval, two policies, a pending policy deletion.
    await fleet.mutate((b) => {
      let s = applyEngage(b, 'proxy', actor, 'every scope', now);
      s = applyEngage(s, 'keystore:a', actor, 'every scope', now);
      s = applyEngage(s, 'key:a/k1', actor, 'every scope', now, 'k1-hsm-label');
      s = applyApproval(s, 'proxy', bob, 'one of two', now, 2, 3_600_000).state;
      s = applyPolicySet(s, 'a', policy('AllowAliceA'), actor, 'tenant a', now);
      s = applyPolicySet(s, 'b', policy('AllowAliceB'), actor, 'tenant b', now);
      s = applyPolicyApproval(s, { keyStore: 'b', change: 'delete', digest: 'd'.repeat(64) }, bob, 'retire b', now, 2, 3_600_000).state;
      return { body: s, result: undefined };
    }, Date.now);
    const src = await fleet.read();
    expect(src.ok).to.equal(true);
    if (!src.ok) return;
    const stateDir = path.join(token.dir, `migrate-back-${crypto.randomBytes(3).toString('hex')}`);
    const configFile = cliConfig('migrate-back', { store: 'etcd', stateDir, stateAuth: { anchorLabel: `anchor-${path.basename(stateDir)}` }, etcd: { endpoints: etcd.endpoints, prefix: p } });
    const out = sink();
    const err = sink();
    expect(await controlCommand(['migrate', '--to', 'file', '--confirm', '--config', configFile], out, err), err.text).to.equal(0);
    expect(out.text).to.match(/3 block\(s\), 2 policy\(ies\)/);
    // Read back as the file store reads it (MAC and the HSM's generation record).
    const file = await new StateStore(stateDir, hsmStateAuthenticator(hsm, { hsmKeyLabel: 'xks-control-state', anchorLabel: `anchor-${path.basename(stateDir)}` })).read();
    expect(file.ok, file.ok ? '' : file.fresh ? 'fresh' : file.reason).to.equal(true);
    if (!file.ok) return;
    expect(file.state.body).to.deep.equal(src.state.body);
    expect(file.state.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['key:a/k1', 'keystore:a', 'proxy']);
    expect(file.state.body.blocks.find((b) => b.scope === 'key:a/k1')!.hsmKey).to.equal('k1-hsm-label');
    expect(file.state.body.approvals.map((a) => `${a.scope} ${a.by.operator}`)).to.deep.equal(['proxy bob']);
    expect(Object.keys(file.state.body.policies).sort()).to.deep.equal(['a', 'b']);
    expect(file.state.body.policyApprovals?.map((a) => `${a.keyStore} ${a.change} ${a.by.operator}`)).to.deep.equal(['b delete bob']);
    // A state folder that has a state is never overwritten.
    const err2 = sink();
    expect(await controlCommand(['migrate', '--to', 'file', '--confirm', '--config', configFile], sink(), err2)).to.equal(1);
    expect(err2.text).to.match(/never overwritten/);
  });

  it('a member whose first read after a staleness spell fails (HSM fault) reads again by itself once it can: not failing closed for good', async () => {
    const p = fresh();
    const real = hsmStateAuthenticator(hsm, { hsmKeyLabel: 'xks-control-state', anchorLabel: 'unused-in-etcd-mode' });
    // Fault injection: the member's HSM stops answering verifications while `down` is set.
    let down = false;
    const flaky: StateAuthenticator = { ...real, verify: (d, m) => (down ? Promise.reject(new Error('injected: HSM not answering')) : real.verify(d, m)) };
    const store = new EtcdControlStore(client, flaky, { prefix: p, maxStalenessMs: 1000, keepLastKnownMs: 0, log: createSilentLogger() });
    stores.push(store);
    const cp = await ControlPlane.open({ store, stateAuth: flaky, keyStores: ['ks'], approvalsRequired: 2, approvalWindowMs: 600_000, drainTimeoutMs: 100, watchIntervalMs: 100, log: createSilentLogger() });
    store.setLeaseOk(true);
    cp.startWatching();
    const next = <T>(ev: string, pred: (x: T) => boolean) => waitEvent(cp, ev, pred, 15_000);
    try {
      expect(cp.isFailClosed()).to.equal(false);
      // Unconfirmed past the bound (the membership lease lost, as fleet.ts reports it): fail closed.
      const stale = next('stale', () => true);
      store.setLeaseOk(false, 'injected: lease lost');
      await stale;
      // Confirmed again, but the re-read of the (unchanged) state fails in the HSM.
      down = true;
      const fault = next<{ failClosed?: string }>('reload', (x) => /injected: HSM/.test(x.failClosed ?? ''));
      store.setLeaseOk(true);
      await fault;
      // The HSM answers again; nothing changes in etcd. The member must read the state again itself.
      const trusted = next<{ failClosed?: string }>('reload', (x) => x.failClosed === undefined);
      down = false;
      await trusted;
      expect(cp.isFailClosed()).to.equal(false);
    } finally {
      cp.close();
    }
  });

  it('a watch that etcd cancels (e.g. its resume revision compacted) is opened again: changes still arrive through a watch', async () => {
    const p = fresh();
    const auth = hsmStateAuthenticator(hsm, { hsmKeyLabel: 'xks-control-state', anchorLabel: 'unused-in-etcd-mode' });
    // A long bound: the heartbeat's resync (every 15 s) cannot be what picks the change up here.
    const store = new EtcdControlStore(client, auth, { prefix: p, maxStalenessMs: 60_000, keepLastKnownMs: 0, log: createSilentLogger() });
    stores.push(store);
    const cp = await ControlPlane.open({ store, stateAuth: auth, keyStores: ['ks'], approvalsRequired: 2, approvalWindowMs: 600_000, drainTimeoutMs: 100, watchIntervalMs: 100, log: createSilentLogger() });
    store.setLeaseOk(true);
    cp.startWatching();
    try {
      // The first watch is up once a change made elsewhere arrives through it.
      const first = waitEvent<{ origin: string }>(cp, 'reload', () => true, 10_000);
      await newStore(p).mutate(engage('proxy'), Date.now);
      expect((await first).origin).to.match(/^etcd-watch/);
      // Fault injection: etcd cancels the watch. The client then drops the watcher and reports the
      // cancellation as its 'error': here the watch is cancelled for real, then the report sent.
      const watcher = (store as unknown as { watcher: Watcher }).watcher;
      await watcher.cancel();
      watcher.emit('error', new Error('injected: watch cancelled by etcd (required revision has been compacted)'));
      const second = waitEvent<{ origin: string }>(cp, 'reload', () => true, 10_000);
      await newStore(p).mutate(engage('keystore:ks'), Date.now);
      expect((await second).origin).to.match(/^etcd-watch/);
      expect(cp.publicState().blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:ks', 'proxy']);
    } finally {
      cp.close();
    }
  });

  it('the member list follows joins after etcd cancelled its watch (engages must not miss a member)', async () => {
    const p = fresh();
    const store = newStore(p);
    const fleet = new EtcdFleet(client, store, { prefix: p, nodeId: 'X', version: 'test', address: 'x:1', leaseTtlSeconds: 5, ackTimeoutMs: 1000, log: createSilentLogger() });
    try {
      await fleet.start();
      expect(fleet.list().map((m) => m.nodeId)).to.deep.equal(['X']);
      // Fault injection: etcd cancels the member watch; the client drops it and reports an 'error'.
      const watcher = (fleet as unknown as { watcher: Watcher }).watcher;
      await watcher.cancel();
      watcher.emit('error', new Error('injected: watch cancelled by etcd (required revision has been compacted)'));
      const at = new Date().toISOString();
      await client.put(`${p}members/Y`).value(JSON.stringify({ nodeId: 'Y', version: 'test', address: 'y:1', startedAt: at, appliedRevision: 0, health: 'ACTIVE', stale: false, updatedAt: at }));
      // Bounded poll: the member list has no event of its own to wait on.
      const deadline = Date.now() + 10_000;
      while (!fleet.list().some((m) => m.nodeId === 'Y') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(fleet.list().map((m) => m.nodeId)).to.deep.equal(['X', 'Y']);
    } finally {
      await fleet.close();
    }
  });

  describe('repair of an untrusted state in etcd (what killswitch repair runs)', () => {
    const build = (base: StateBody | undefined, note: string) => applyRepair(base ?? emptyState(), { operator: 'carol', via: 'local-cli' }, 'repaired in a test', Date.now(), note);
    /** A member that has seen generation 3 (its rollback floor), and the value of generation 2. */
    async function fleetAtGeneration3(): Promise<{ p: string; member: EtcdControlStore; gen2: string }> {
      const p = fresh();
      const member = newStore(p);
      await member.initIfFresh(Date.now());
      await member.mutate(engage('keystore:x'), Date.now);
      const gen2 = (await client.get(`${p}control/state`).string())!;
      await member.mutate(engage('key:x/k1'), Date.now);
      const r = await member.read();
      expect(r.ok && r.state.generation).to.equal(3);
      return { p, member, gen2 };
    }

    it('an old value put back (rollback): the repair, run without the member\'s memory, still lands above its floor', async () => {
      const { p, member, gen2 } = await fleetAtGeneration3();
      await client.put(`${p}control/state`).value(gen2);
      const before = await member.read();
      expect(before.ok).to.equal(false);
      // The CLI's store has never seen the fleet: the history of the key tells it generation 3.
      const repaired = await newStore(p).repair('empty', build);
      expect(repaired.generation).to.equal(4);
      const after = await member.read();
      expect(after.ok, after.ok ? '' : after.fresh ? 'fresh' : after.reason).to.equal(true);
      if (after.ok) expect(after.state.body.blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
      // The untrusted value is kept for forensics.
      const broken = await client.getAll().prefix(`${p}control/broken/`).strings();
      expect(Object.values(broken)).to.deep.equal([gen2]);
    });

    it('a deleted state, --from-backup: the last verified value from etcd\'s history, plus the proxy block', async () => {
      const { p, member } = await fleetAtGeneration3();
      await client.delete().key(`${p}control/state`);
      const repaired = await newStore(p).repair('backup', build);
      expect(repaired.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['key:x/k1', 'keystore:x', 'proxy']);
      const after = await member.read();
      expect(after.ok).to.equal(true);
      if (after.ok) expect(after.state.generation).to.equal(4);
    });

    it('a forged value: repaired; a good state is never repaired; a member record\'s floor raises the generation', async () => {
      const { p, member } = await fleetAtGeneration3();
      let refused: Error | undefined;
      await newStore(p).repair('empty', build).catch((e: Error) => (refused = e));
      expect(refused?.message).to.match(/nothing to repair/);
      // A member (live, in the fleet) says it verified generation 7 of this store.
      const storeId = ((await member.read()) as { state: { storeId: string } }).state.storeId;
      await client.put(`${p}members/m1`).value(JSON.stringify({ nodeId: 'm1', appliedRevision: 1, storeId, stateGeneration: 7 }));
      const forged = JSON.parse((await client.get(`${p}control/state`).string())!);
      forged.body.blocks = [];
      await client.put(`${p}control/state`).value(JSON.stringify(forged));
      const repaired = await newStore(p).repair('empty', build);
      expect(repaired.generation).to.equal(8);
      expect(repaired.storeId).to.equal(storeId);
      expect((await member.read()).ok).to.equal(true);
    });
  });

  it('control migrate --to etcd copies the file store with every block and policy, once; fleet status reads the fleet', async () => {
    const stateDir = path.join(token.dir, 'migrate-state');
    const auth = hsmStateAuthenticator(hsm, { hsmKeyLabel: 'xks-control-state', anchorLabel: 'migrate-anchor' });
    const file = new StateStore(stateDir, auth);
    file.ensureDir();
    await file.mutate(engage('proxy'), Date.now);
    await file.mutate(engage('keystore:a'), Date.now);
    const p = fresh();
    const configFile = cliConfig('migrate', { store: 'file', stateDir, stateAuth: { anchorLabel: 'migrate-anchor' }, etcd: { endpoints: etcd.endpoints, prefix: p } });
    const out = sink();
    const err = sink();
    expect(await controlCommand(['migrate', '--to', 'etcd', '--confirm', '--config', configFile], out, err), err.text).to.equal(0);
    const r = await newStore(p).read();
    expect(r.ok).to.equal(true);
    if (r.ok) expect(r.state.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'proxy']);
    // Never over a fleet that has a state.
    const err2 = sink();
    expect(await controlCommand(['migrate', '--to', 'etcd', '--confirm', '--config', configFile], sink(), err2)).to.equal(1);
    expect(err2.text).to.match(/never overwritten/);
    const st = sink();
    expect(await fleetCommand(['status', '--json', '--config', configFile], st, sink())).to.equal(0);
    const status = JSON.parse(st.text);
    expect(status.controlRevision).to.be.greaterThan(0);
    expect(status.members).to.deep.equal([]);
    // A member that last confirmed the state a minute ago (cut off, lease not expired yet), and
    // one of an older version that does not say.
    const at = new Date(Date.now() - 60_000).toISOString();
    await client.put(`${p}members/cut-off`).value(JSON.stringify({ nodeId: 'cut-off', version: '0.1.0', address: 'x:1', startedAt: at, appliedRevision: 1, health: 'ACTIVE', stale: true, confirmedAt: at, updatedAt: at }));
    await client.put(`${p}members/older`).value(JSON.stringify({ nodeId: 'older', version: '0.0.9', address: 'x:2', startedAt: at, appliedRevision: 1, health: 'ACTIVE', stale: false, updatedAt: at }));
    const st2 = sink();
    expect(await fleetCommand(['status', '--json', '--config', configFile], st2, sink())).to.equal(0);
    const members = (JSON.parse(st2.text) as { members: Array<{ nodeId: string; stalenessMs: number | null }> }).members;
    expect(members.map((m) => m.nodeId)).to.deep.equal(['cut-off', 'older']);
    expect(members[0]!.stalenessMs).to.be.at.least(60_000);
    expect(members[1]!.stalenessMs).to.equal(null);
    const table = sink();
    expect(await fleetCommand(['status', '--config', configFile], table, sink())).to.equal(0);
    expect(table.text).to.match(/cut-off .* staleness \d{5,} ms .* REFUSING/);
    expect(table.text).to.match(/older .* staleness - /);
  });
});
