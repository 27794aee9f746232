/**
 * The control plane behind the AccessGate: scopes, quorum (injected clock), drain, fail closed,
 * and pick-up of changes written by another process.
 */
import { expect } from 'chai';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ControlPlane, type ControlPlaneOptions } from '../../../src/control/control-plane';
import type { StateAuthenticator } from '../../../src/control/state-auth';
import { applyEngage, type Actor } from '../../../src/control/state-model';
import { STATE_FILE, StateStore } from '../../../src/control/state-store';
import { XksError } from '../../../src/errors/xks-error';
import { createSilentLogger } from '../../../src/log/logger';
import type { XksApi } from '../../../src/xks/requests';
import type { GateContext } from '../../../src/control/access-gate';
import { directoryOf } from '../../../src/control/key-directory';
import type { KeyStoreConfig } from '../../../src/config/schema';
import { openStateHsm, type StateHsm } from '../../helpers/state-hsm';

const op = (name: string): Actor => ({ operator: name, via: 'admin-api' });
const md = { kmsRequestId: 'r1', kmsOperation: 'Encrypt', awsPrincipalArn: 'arn:aws:iam::111122223333:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/x' };
const ctx = (api: XksApi, keyStore = 'a', externalKeyId: string | undefined = api === 'GetHealthStatus' ? undefined : 'k1'): GateContext => ({ api, keyStore, externalKeyId, metadata: md });
const APIS: XksApi[] = ['GetHealthStatus', 'GetKeyMetadata', 'Encrypt', 'Decrypt'];

function outcome(cp: ControlPlane, c: GateContext): string {
  try {
    const t = cp.enter(c);
    t.done();
    return t.keyBlocked ? 'keyBlocked' : 'ok';
  } catch (e) {
    return (e as XksError).errorName;
  }
}

describe('control plane', () => {
  let dir: string;
  let clock: number;
  let cp: ControlPlane;
  let shsm: StateHsm;
  let auth: StateAuthenticator;
  const make = (over: Partial<ControlPlaneOptions> = {}) =>
    ControlPlane.open({ stateDir: dir, keyStores: ['a', 'b'], approvalsRequired: 2, approvalWindowMs: 600_000, drainTimeoutMs: 2000, watchIntervalMs: 50, stateAuth: auth, log: createSilentLogger(), now: () => clock, ...over });

  before(async () => {
    shsm = await openStateHsm();
  });
  after(() => shsm.close());
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-cp-'));
    auth = shsm.newAuth();
    clock = Date.parse('2030-01-01T00:00:00Z');
    cp = await make();
  });
  afterEach(() => {
    cp.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('scopes and their effect on the four APIs', () => {
    const table: [string, Record<XksApi, string>, Record<XksApi, string>][] = [
      // scope, effect in key store a on key k1, effect in key store b
      ['proxy', { GetHealthStatus: 'InvalidStateException', GetKeyMetadata: 'InvalidStateException', Encrypt: 'InvalidStateException', Decrypt: 'InvalidStateException' }, { GetHealthStatus: 'InvalidStateException', GetKeyMetadata: 'InvalidStateException', Encrypt: 'InvalidStateException', Decrypt: 'InvalidStateException' }],
      ['keystore:a', { GetHealthStatus: 'InvalidStateException', GetKeyMetadata: 'InvalidStateException', Encrypt: 'InvalidStateException', Decrypt: 'InvalidStateException' }, { GetHealthStatus: 'ok', GetKeyMetadata: 'ok', Encrypt: 'ok', Decrypt: 'ok' }],
      ['key:a/k1', { GetHealthStatus: 'ok', GetKeyMetadata: 'keyBlocked', Encrypt: 'InvalidStateException', Decrypt: 'InvalidStateException' }, { GetHealthStatus: 'ok', GetKeyMetadata: 'ok', Encrypt: 'ok', Decrypt: 'ok' }],
    ];
    for (const [scope, inA, inB] of table) {
      it(`${scope}`, async () => {
        for (const api of APIS) expect(outcome(cp, ctx(api)), `${api} before`).to.equal('ok');
        await cp.engage(scope, op('alice'), 'incident 42');
        for (const api of APIS) expect(outcome(cp, ctx(api, 'a')), `${api} in a`).to.equal(inA[api]);
        for (const api of APIS) expect(outcome(cp, ctx(api, 'b')), `${api} in b`).to.equal(inB[api]);
        // Another key of the same store is not affected by a key block.
        if (scope.startsWith('key:')) expect(outcome(cp, ctx('Encrypt', 'a', 'k2'))).to.equal('ok');
      });
    }

    it('refuses scopes naming unknown key stores or malformed scopes, and empty reasons', async () => {
      for (const [scope, reason] of [['keystore:nope', 'r'], ['key:a', 'r'], ['everything', 'r'], ['proxy', ' ']]) {
        try {
          await cp.engage(scope!, op('alice'), reason!);
          expect.fail(`should refuse ${scope}`);
        } catch (e) {
          expect((e as Error).message).to.match(/scope|key store|reason/);
        }
      }
    });
  });

  describe('lift quorum', () => {
    beforeEach(() => cp.engage('keystore:a', op('alice'), 'incident'));

    it('one operator cannot lift alone; a second distinct operator lifts', async () => {
      const r1 = await cp.approveLift('keystore:a', op('alice'), 'all clear');
      expect(r1).to.include({ lifted: false, required: 2 });
      expect(outcome(cp, ctx('Encrypt'))).to.equal('InvalidStateException');
      const r2 = await cp.approveLift('keystore:a', op('bob'), 'agreed');
      expect(r2.lifted).to.equal(true);
      expect(r2.approvers).to.deep.equal(['alice', 'bob']);
      expect(outcome(cp, ctx('Encrypt'))).to.equal('ok');
      const h = cp.publicState().history.map((e) => `${e.action}:${e.by.operator}`);
      expect(h).to.deep.equal(['engage:alice', 'approve-lift:alice', 'approve-lift:bob', 'lift:bob']);
    });

    it('the same operator approving twice counts once', async () => {
      await cp.approveLift('keystore:a', op('alice'), 'one');
      const r = await cp.approveLift('keystore:a', op('alice'), 'two');
      expect(r).to.include({ lifted: false });
      expect(r.approvers).to.deep.equal(['alice']);
      expect(outcome(cp, ctx('Decrypt'))).to.equal('InvalidStateException');
    });

    it('approvals expire after the window', async () => {
      await cp.approveLift('keystore:a', op('alice'), 'one');
      clock += 600_001;
      const r = await cp.approveLift('keystore:a', op('bob'), 'two');
      expect(r).to.include({ lifted: false });
      expect(r.approvers).to.deep.equal(['bob']);
      clock += 1000;
      expect((await cp.approveLift('keystore:a', op('carol'), 'three')).lifted).to.equal(true);
    });

    it('approvals for one scope do not count for another', async () => {
      await cp.engage('proxy', op('alice'), 'bigger incident');
      await cp.approveLift('keystore:a', op('alice'), 'x');
      expect((await cp.approveLift('proxy', op('bob'), 'y')).lifted).to.equal(false);
    });

    it('re-engaging a scope restarts its quorum', async () => {
      await cp.approveLift('keystore:a', op('alice'), 'x');
      await cp.engage('keystore:a', op('carol'), 'again');
      expect((await cp.approveLift('keystore:a', op('bob'), 'y')).lifted).to.equal(false);
    });

    it('approving a scope that is not blocked is refused', async () => {
      try {
        await cp.approveLift('keystore:b', op('alice'), 'x');
        expect.fail('should refuse');
      } catch (e) {
        expect((e as { code?: string }).code).to.equal('not-blocked');
      }
    });

    it('the quorum survives a restart (approvals are durable)', async () => {
      await cp.approveLift('keystore:a', op('alice'), 'x');
      cp.close();
      cp = await make();
      expect(outcome(cp, ctx('Encrypt'))).to.equal('InvalidStateException');
      expect((await cp.approveLift('keystore:a', op('bob'), 'y')).lifted).to.equal(true);
    });
  });

  describe('drain', () => {
    it('engage resolves only after tickets in scope issued before it are done; others do not hold it', async () => {
      const inScope = cp.enter(ctx('Encrypt', 'a', 'k1'));
      const other = cp.enter(ctx('Encrypt', 'b', 'k1'));
      let resolved = false;
      const p = cp.engage('keystore:a', op('alice'), 'x').then((r) => {
        resolved = true;
        return r;
      });
      // Let the (synchronous) write and the swap happen: wait for the state change itself.
      await once(cp, 'reload');
      expect(outcome(cp, ctx('Encrypt', 'a', 'k2'))).to.equal('InvalidStateException');
      expect(resolved).to.equal(false);
      inScope.done();
      const r = await p;
      expect(r).to.include({ drained: true, stillInFlight: 0 });
      other.done();
    });

    it('reports operations still in flight after the drain timeout', async () => {
      cp.close();
      cp = await make({ drainTimeoutMs: 20 });
      const stuck = cp.enter(ctx('Decrypt'));
      const r = await cp.engage('proxy', op('alice'), 'x');
      expect(r).to.include({ drained: false, stillInFlight: 1 });
      stuck.done();
    });
  });

  describe('allowlists through the gate', () => {
    it('a denial carries the statement; health is never evaluated; invalid policies leave the old one in force', async () => {
      await cp.setPolicy('a', { defaultDecision: 'deny', statements: [{ sid: 'AllowAlice', effect: 'allow', conditions: { awsPrincipalArn: [md.awsPrincipalArn] } }] }, op('alice'), 'tighten');
      expect(cp.enter(ctx('Encrypt')).allowedBy).to.equal('AllowAlice');
      const denied = (() => {
        try {
          cp.enter({ ...ctx('Encrypt'), metadata: { ...md, awsPrincipalArn: 'arn:aws:iam::1:user/x' } });
        } catch (e) {
          return e as XksError;
        }
        return undefined;
      })();
      expect(denied?.errorName).to.equal('AccessDeniedException');
      expect(denied?.statement).to.equal('(defaultDecision deny)');
      expect(outcome(cp, { ...ctx('GetHealthStatus'), metadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } })).to.equal('ok');
      try {
        await cp.setPolicy('a', { defaultDecision: 'allow', statements: [{ sid: 'x', effect: 'allow' }, { sid: 'x', effect: 'deny' }] }, op('alice'), 'broken');
        expect.fail('should refuse');
      } catch (e) {
        expect((e as { errors?: string[] }).errors?.join()).to.match(/duplicate sid/);
      }
      expect(cp.policy('a')?.revision).to.equal(1);
      expect(cp.enter(ctx('Encrypt')).allowedBy).to.equal('AllowAlice');
    });
  });

  describe('fail closed', () => {
    it('a corrupt file at start-up blocks everything, health included; no change or approval is accepted', async () => {
      await cp.engage('keystore:a', op('alice'), 'x');
      cp.close();
      fs.writeFileSync(path.join(dir, STATE_FILE), '{"format":"xks-proxy-control-state","vers');
      cp = await make();
      expect(cp.isFailClosed()).to.equal(true);
      expect(cp.publicState().failClosed).to.match(/not valid JSON/);
      for (const ks of ['a', 'b']) for (const api of APIS) expect(outcome(cp, ctx(api, ks))).to.equal('InvalidStateException');
      for (const f of [() => cp.approveLift('keystore:a', op('alice'), 'x'), () => cp.engage('proxy', op('bob'), 'y')]) {
        try {
          await f();
          expect.fail('should refuse');
        } catch (e) {
          expect((e as { code?: string }).code).to.equal('fail-closed');
        }
      }
    });

    it('a state folder that cannot be created fails closed', async () => {
      cp.close();
      auth = shsm.newAuth();
      const file = path.join(dir, 'not-a-folder');
      fs.writeFileSync(file, 'x');
      cp = await make({ stateDir: path.join(file, 'state') });
      expect(cp.isFailClosed()).to.equal(true);
      expect(outcome(cp, ctx('GetHealthStatus'))).to.equal('InvalidStateException');
    });
  });

  describe('changes made by another process', () => {
    it('are picked up through the watcher, with a reload event and an external-change record', async () => {
      cp.startWatching();
      const changed = once(cp, 'external-change');
      const store = new StateStore(dir, auth);
      await store.mutate((b) => ({ body: applyEngage(b, 'keystore:b', { operator: 'eve', via: 'local-cli', osUser: 'root' }, 'admin API down', clock), result: undefined }));
      const [events] = (await changed) as [{ action: string; by: Actor }[]];
      expect(events.map((e) => `${e.action}:${e.by.operator}`)).to.deep.equal(['engage:eve']);
      expect(outcome(cp, ctx('Encrypt', 'b'))).to.equal('InvalidStateException');
    });

    it('a rollback or a deletion while running is tampering: a tamper event, fail closed, not ready; an engaged block is ready', async () => {
      await cp.engage('keystore:a', op('alice'), 'x');
      expect(cp.readinessFault()).to.equal(undefined);
      await cp.engage('keystore:b', op('alice'), 'y');
      cp.startWatching();
      const tampered = once(cp, 'tamper');
      fs.copyFileSync(path.join(dir, 'state.prev.json'), path.join(dir, STATE_FILE));
      const [t] = (await tampered) as [{ reason: string }];
      expect(t.reason).to.match(/rollback/);
      expect(cp.tamperReason()).to.match(/rollback/);
      expect(cp.readinessFault()).to.match(/tampering/);
      for (const ks of ['a', 'b']) expect(outcome(cp, ctx('Encrypt', ks))).to.equal('InvalidStateException');
      const again = once(cp, 'tamper');
      fs.rmSync(path.join(dir, STATE_FILE));
      expect(((await again) as [{ reason: string }])[0].reason).to.match(/missing/);
    });

    it('an HSM that cannot verify the state is a fault (fail closed, not ready, no tamper event), and the node recovers by itself', async () => {
      await cp.engage('keystore:a', op('alice'), 'x');
      cp.close();
      // Fault injection around the real authenticator: the HSM stops answering for a while.
      let hsmDown = false;
      const real = auth;
      const flaky: StateAuthenticator = {
        ...real,
        readAnchor: () => (hsmDown ? Promise.reject(new Error('CKR_DEVICE_REMOVED')) : real.readAnchor()),
        verify: (d, m) => (hsmDown ? Promise.reject(new Error('CKR_DEVICE_REMOVED')) : real.verify(d, m)),
      };
      cp = await make({ stateAuth: flaky });
      cp.startWatching();
      let tampers = 0;
      cp.on('tamper', () => tampers++);
      hsmDown = true;
      const down = once(cp, 'reload');
      await cp.reload('test');
      await down;
      expect(cp.readinessFault()).to.match(/cannot be verified/);
      expect(cp.tamperReason()).to.equal(undefined);
      expect(outcome(cp, ctx('Encrypt', 'b'))).to.equal('InvalidStateException');
      const up = once(cp, 'reload');
      hsmDown = false;
      await up;
      expect(cp.isFailClosed()).to.equal(false);
      expect(cp.readinessFault()).to.equal(undefined);
      expect(outcome(cp, ctx('Encrypt', 'b'))).to.equal('ok');
      expect(outcome(cp, ctx('Encrypt', 'a'))).to.equal('InvalidStateException');
      expect(tampers).to.equal(0);
    });

    it('a file corrupted while running fails closed at once, and a repaired one is picked up', async () => {
      cp.startWatching();
      let r = once(cp, 'reload');
      fs.writeFileSync(path.join(dir, STATE_FILE), 'garbage');
      await r;
      expect(outcome(cp, ctx('GetHealthStatus'))).to.equal('InvalidStateException');
      r = once(cp, 'reload');
      await new StateStore(dir, auth).repair('empty', (base, note) => ({ ...(base ?? { blocks: [], approvals: [], policies: {}, history: [] }), history: [{ at: new Date(clock).toISOString(), action: 'repair', by: { operator: 'x', via: 'local-cli' }, reason: note }] }));
      await r;
      expect(cp.isFailClosed()).to.equal(false);
      expect(outcome(cp, ctx('GetHealthStatus'))).to.equal('ok');
    });
  });

  describe('key blocks reach the HSM key; key stores are read live', () => {
    // The configuration in force, changed in place as a reload would.
    let stores: Pick<KeyStoreConfig, 'name' | 'keys'>[];
    const key = (externalKeyId: string, label?: string) => ({ externalKeyId, enabled: true, ...(label ? { label } : {}) });
    const on = (api: XksApi, keyStore: string, externalKeyId: string, hsmKey: string | undefined): GateContext => ({ api, keyStore, externalKeyId, hsmKey, metadata: md });
    beforeEach(async () => {
      cp.close();
      stores = [
        { name: 'a', keys: [key('k1', 'L'), key('alias', 'L'), key('k2')] },
        { name: 'b', keys: [key('other', 'L')] },
      ];
      cp = await make({ keyStores: directoryOf(stores) });
    });

    it('a block on one id stops every id naming the same HSM key, in any key store', async () => {
      await cp.engage('key:a/k1', op('alice'), 'leak');
      expect(outcome(cp, on('Encrypt', 'a', 'alias', 'L'))).to.equal('InvalidStateException');
      expect(outcome(cp, on('Decrypt', 'b', 'other', 'L'))).to.equal('InvalidStateException');
      expect(outcome(cp, on('GetKeyMetadata', 'b', 'other', 'L'))).to.equal('keyBlocked');
      expect(outcome(cp, on('Encrypt', 'a', 'k2', 'k2'))).to.equal('ok');
      const b = cp.publicState().blocks[0]!;
      expect(b.hsmKey).to.equal('L');
      expect(b.covers.externalKeys.map((p) => `${p.keyStore}/${p.externalKeyId}`)).to.deep.equal(['a/k1', 'a/alias', 'b/other']);
    });

    it('waits for operations already running on another id of the same HSM key', async () => {
      const running = cp.enter(on('Encrypt', 'b', 'other', 'L'));
      let resolved = false;
      const p = cp.engage('key:a/k1', op('alice'), 'leak').then((r) => {
        resolved = true;
        return r;
      });
      await once(cp, 'reload');
      expect(resolved).to.equal(false);
      running.done();
      expect(await p).to.include({ drained: true, stillInFlight: 0 });
    });

    it('after a reload: a new id for a blocked HSM key is blocked, a new key store can be blocked and given a policy', async () => {
      await cp.engage('key:a/k1', op('alice'), 'leak');
      stores[1]!.keys.push(key('late', 'L'));
      stores.push({ name: 'c', keys: [] });
      cp.refresh();
      expect(cp.publicState().blocks[0]!.covers.externalKeys.map((p) => `${p.keyStore}/${p.externalKeyId}`)).to.include('b/late');
      await cp.engage('keystore:c', op('alice'), 'new tenant');
      expect(outcome(cp, ctx('Encrypt', 'c'))).to.equal('InvalidStateException');
      expect((await cp.setPolicy('b', { defaultDecision: 'deny' }, op('alice'), 'closed')).applied).to.equal(true);
    });

    it('a block on a key store removed by reload stays, can still be lifted, and shows as not configured', async () => {
      await cp.engage('keystore:b', op('alice'), 'x');
      stores.splice(1, 1);
      cp.refresh();
      expect(cp.publicState().blocks[0]!.covers.notConfigured).to.deep.equal(['b']);
      expect(outcome(cp, ctx('Encrypt', 'b'))).to.equal('InvalidStateException');
      await cp.approveLift('keystore:b', op('alice'), 'gone');
      expect((await cp.approveLift('keystore:b', op('bob'), 'gone')).lifted).to.equal(true);
    });
  });

  describe('policy changes and the quorum', () => {
    const allowAlice = { defaultDecision: 'deny', statements: [{ sid: 'AllowAlice', effect: 'allow', conditions: { awsPrincipalArn: [md.awsPrincipalArn] } }] };

    it('a loosening waits for a second operator inside the window; an expired approval does not count', async () => {
      await cp.setPolicy('a', allowAlice, op('alice'), 'start');
      const r1 = await cp.deletePolicy('a', op('alice'), 'open up');
      expect(r1).to.include({ applied: false, kind: 'loosening' });
      expect(cp.policy('a')).to.not.equal(undefined);
      clock += 600_001;
      const r2 = await cp.deletePolicy('a', op('bob'), 'open up');
      expect(r2.approvers).to.deep.equal(['bob']);
      expect(cp.policy('a')).to.not.equal(undefined);
      clock += 1000;
      expect((await cp.deletePolicy('a', op('carol'), 'agreed')).applied).to.equal(true);
      expect(cp.policy('a')).to.equal(undefined);
      expect(cp.publicState().pendingPolicyApprovals).to.deep.equal([]);
    });

    it('a tightening applied meanwhile voids the pending approvals of a loosening', async () => {
      await cp.setPolicy('a', allowAlice, op('alice'), 'start');
      await cp.setPolicy('a', { defaultDecision: 'allow' }, op('alice'), 'open up');
      expect(cp.publicState().pendingPolicyApprovals).to.have.length(1);
      await cp.setPolicy('a', { defaultDecision: 'deny' }, op('carol'), 'close');
      expect(cp.publicState().pendingPolicyApprovals).to.deep.equal([]);
      expect((await cp.setPolicy('a', { defaultDecision: 'allow' }, op('bob'), 'open up')).applied).to.equal(false);
    });

    it('defaultForKeyStoresWithoutPolicy deny: no policy denies; a first policy is then a loosening', async () => {
      cp.close();
      cp = await make({ defaultForKeyStoresWithoutPolicy: 'deny' });
      expect(outcome(cp, ctx('Encrypt'))).to.equal('AccessDeniedException');
      expect(outcome(cp, { ...ctx('GetHealthStatus'), metadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } })).to.equal('ok');
      expect((await cp.setPolicy('a', allowAlice, op('alice'), 'open for alice')).applied).to.equal(false);
      expect((await cp.setPolicy('a', { defaultDecision: 'deny' }, op('alice'), 'explicit deny-all')).applied).to.equal(true);
    });
  });
});
