/**
 * The durable control state: round trip, authentication inside a real SoftHSM2 token (MAC and
 * generation record), corruption and tampering (fail closed), stale locks, repair.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { canonicalJson } from '../../../src/audit/canonical';
import type { StateAuthenticator } from '../../../src/control/state-auth';
import { applyEngage, applyRepair, emptyState, type Actor } from '../../../src/control/state-model';
import { BACKUP_FILE, LOCK_FILE, MARKER_FILE, STATE_FILE, StateStore, type ReadResult, type RepairSource } from '../../../src/control/state-store';
import { openStateHsm, type StateHsm } from '../../helpers/state-hsm';

const alice: Actor = { operator: 'alice', via: 'admin-api' };

function reasonOf(r: ReadResult): { reason: string; tamper: boolean } {
  if (r.ok || r.fresh) throw new Error(`expected an untrusted state, got ${r.ok ? 'a verified one' : 'fresh'}`);
  return { reason: r.reason, tamper: r.tamper };
}

describe('control state store', () => {
  let shsm: StateHsm;
  let dir: string;
  let auth: StateAuthenticator;
  let store: StateStore;
  before(async () => {
    shsm = await openStateHsm();
  });
  after(() => shsm.close());
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-state-'));
    auth = shsm.newAuth();
    store = new StateStore(dir, auth, 2000);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const engage = (scope: string, s = store) => s.mutate((b) => ({ body: applyEngage(b, scope, alice, 'test', Date.now()), result: undefined }));
  const stateText = () => fs.readFileSync(path.join(dir, STATE_FILE), 'utf8');
  const writeState = (t: string) => fs.writeFileSync(path.join(dir, STATE_FILE), t);

  it('a fresh folder reads as fresh; the first write initialises it (0600 file, marker, HSM record)', async () => {
    expect(await store.read()).to.deep.equal({ ok: false, fresh: true });
    expect(await auth.readAnchor()).to.equal(undefined);
    const { state } = await engage('proxy');
    expect(state.generation).to.equal(1);
    const r = await store.read();
    expect(r.ok && r.state.body.blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
    expect(fs.statSync(path.join(dir, STATE_FILE)).mode & 0o777).to.equal(0o600);
    expect(fs.existsSync(path.join(dir, MARKER_FILE))).to.equal(true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).to.deep.equal([]);
    expect(await auth.readAnchor()).to.deep.equal({ storeId: state.storeId, generation: 1 });
  });

  it('every write increments the generation, keeps the previous file as the backup and moves the HSM record', async () => {
    await engage('proxy');
    await engage('keystore:a');
    const r = await store.read();
    expect(r.ok && r.state.generation).to.equal(2);
    expect(JSON.parse(fs.readFileSync(path.join(dir, BACKUP_FILE), 'utf8')).generation).to.equal(1);
    expect((await auth.readAnchor())?.generation).to.equal(2);
  });

  describe('tampering and corruption are detected (the proxy then fails closed)', () => {
    const edit = (f: (o: any) => void) => (t: string) => {
      const o = JSON.parse(t);
      f(o);
      return JSON.stringify(o);
    };
    const cases: [string, (text: string) => string, RegExp][] = [
      ['a truncated file', (t) => t.slice(0, Math.floor(t.length / 2)), /not valid JSON/],
      ['an empty file', () => '', /not valid JSON/],
      ['a JSON array', () => '[]', /not a JSON object/],
      ['another format', edit((o) => (o.format = 'x')), /unknown format/],
      ['a flipped character in the body', (t) => t.replace('"proxy"', '"proxz"'), /MAC does not verify/],
      ['a hand edit that removes a block', edit((o) => (o.body.blocks = [])), /MAC does not verify/],
      ['a hand edit with a recomputed SHA-256 in the old format', edit((o) => {
        o.body.blocks = [];
        o.version = 1;
        delete o.mac;
        delete o.storeId;
        o.sha256 = crypto.createHash('sha256').update(canonicalJson({ format: o.format, version: 1, generation: o.generation, writtenAt: o.writtenAt, body: o.body })).digest('hex');
      }), /unauthenticated version 1/],
      ['a MAC computed in software with a guessed key', edit((o) => {
        o.body.blocks = [];
        o.mac = crypto.createHmac('sha256', Buffer.alloc(32)).update(canonicalJson({ format: o.format, version: o.version, storeId: o.storeId, generation: o.generation, writtenAt: o.writtenAt, body: o.body })).digest('hex');
      }), /MAC does not verify/],
      ['a higher generation number', edit((o) => (o.generation += 10)), /MAC does not verify/],
    ];
    for (const [name, corrupt, re] of cases) {
      it(name, async () => {
        await engage('proxy');
        writeState(corrupt(stateText()));
        const r = reasonOf(await store.read());
        expect(r.reason).to.match(re);
        expect(r.tamper).to.equal(true);
      });
    }

    it('rollback: the previous file (valid MAC, older generation) copied over the current one', async () => {
      await engage('keystore:a');
      await engage('proxy');
      fs.copyFileSync(path.join(dir, BACKUP_FILE), path.join(dir, STATE_FILE));
      const r = reasonOf(await store.read());
      expect(r).to.deep.include({ tamper: true });
      expect(r.reason).to.match(/generation 1, older than generation 2 recorded in the HSM/);
    });

    it("another store's file (same HSM key, another generation record)", async () => {
      const otherDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-state-other-'));
      try {
        const other = new StateStore(otherDir, shsm.newAuth());
        for (let i = 0; i < 3; i++) await engage(`keystore:k${i}`, other);
        await engage('proxy');
        fs.copyFileSync(path.join(otherDir, STATE_FILE), path.join(dir, STATE_FILE));
        const r = reasonOf(await store.read());
        expect(r).to.deep.include({ tamper: true });
        expect(r.reason).to.match(/another state store/);
      } finally {
        fs.rmSync(otherDir, { recursive: true, force: true });
      }
    });

    it('a state file deleted after initialisation', async () => {
      await engage('proxy');
      fs.rmSync(path.join(dir, STATE_FILE));
      const r = reasonOf(await store.read());
      expect(r).to.deep.include({ tamper: true });
      expect(r.reason).to.match(/missing .* the HSM records generation 1/);
    });

    it('the whole folder deleted: not fresh (the HSM remembers), and never re-initialised', async () => {
      await engage('proxy');
      fs.rmSync(dir, { recursive: true, force: true });
      expect(reasonOf(await store.read()).tamper).to.equal(true);
      store.ensureDir();
      await store.initIfFresh(Date.now());
      expect(fs.existsSync(path.join(dir, STATE_FILE))).to.equal(false);
      expect(reasonOf(await store.read()).reason).to.match(/missing/);
    });

    it('an unreadable file (a folder in its place) is a fault, not tampering', async () => {
      await engage('proxy');
      fs.rmSync(path.join(dir, STATE_FILE));
      fs.mkdirSync(path.join(dir, STATE_FILE));
      const r = reasonOf(await store.read());
      expect(r.reason).to.match(/cannot read .*EISDIR/);
      expect(r.tamper).to.equal(false);
    });

    it('changes are refused on an untrusted state', async () => {
      await engage('proxy');
      writeState('garbage');
      try {
        await engage('keystore:a');
        expect.fail('should refuse');
      } catch (e) {
        expect((e as { code?: string }).code).to.equal('fail-closed');
      }
      expect(stateText()).to.equal('garbage');
    });
  });

  it('a writer stopped between the file and the HSM record: the file verifies, the record moves forward, the older file is then refused', async () => {
    await engage('keystore:a');
    const gen1 = stateText();
    await engage('proxy');
    // As if the process died after renaming generation 2 into place but before the HSM update.
    const a = (await auth.readAnchor())!;
    await auth.writeAnchor({ ...a, generation: 1 });
    const r = await store.read();
    expect(r.ok && r.state.generation).to.equal(2);
    expect((await auth.readAnchor())?.generation).to.equal(2);
    writeState(gen1);
    expect(reasonOf(await store.read()).reason).to.match(/rollback/);
  });

  describe('migration from the unauthenticated format (version 1)', () => {
    const legacyText = (body = { ...emptyState(), blocks: [{ scope: 'keystore:a', engagedBy: alice, engagedAt: '2030-01-01T00:00:00.000Z', reason: 'old' }] }) => {
      const e = { format: 'xks-proxy-control-state', version: 1, generation: 7, writtenAt: '2030-01-01T00:00:00.000Z', body };
      return JSON.stringify({ ...e, sha256: crypto.createHash('sha256').update(canonicalJson(e)).digest('hex') });
    };

    it('is not trusted silently (a fault, not tampering, before the token has a record)', async () => {
      fs.writeFileSync(path.join(dir, STATE_FILE), legacyText());
      fs.writeFileSync(path.join(dir, MARKER_FILE), 'x');
      const r = await store.read();
      expect(reasonOf(r)).to.deep.include({ tamper: false });
      expect(reasonOf(r).reason).to.match(/adopt-unauthenticated/);
      await store.initIfFresh(Date.now());
      expect(stateText()).to.equal(legacyText());
    });

    it('repair --adopt-unauthenticated keeps its blocks, adds a proxy block, and authenticates it', async () => {
      fs.writeFileSync(path.join(dir, STATE_FILE), legacyText());
      const st = await store.repair('adopt-unauthenticated', (base, note) => applyRepair(base ?? emptyState(), { operator: 'bob', via: 'local-cli' }, 'upgrade', Date.now(), note));
      expect(st.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'proxy']);
      expect((await store.read()).ok).to.equal(true);
    });
  });

  describe('repair', () => {
    const repairWith = (source: RepairSource) => store.repair(source, (base, note) => applyRepair(base ?? emptyState(), { operator: 'bob', via: 'local-cli' }, 'disk fault', Date.now(), note));

    it('refuses to touch a verified state', async () => {
      await engage('keystore:a');
      try {
        await repairWith('empty');
        expect.fail('should refuse');
      } catch (e) {
        expect((e as Error).message).to.match(/nothing to repair/);
      }
    });

    it('replaces a broken file with a proxy-blocked state above every generation seen, and keeps the broken file', async () => {
      await engage('keystore:a');
      await engage('keystore:b');
      writeState('{"trunc');
      const st = await repairWith('empty');
      expect(st.body.blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
      expect(st.generation).to.equal(3);
      expect(st.body.history.at(-1)).to.include({ action: 'repair', reason: 'disk fault' });
      expect(st.body.history.at(-1)!.by).to.deep.equal({ operator: 'bob', via: 'local-cli' });
      expect((await store.read()).ok).to.equal(true);
      expect(fs.readdirSync(dir).some((f) => f.startsWith('state.json.broken-'))).to.equal(true);
    });

    it('repairs a deleted folder (the HSM record stays, the new state is above it)', async () => {
      await engage('keystore:a');
      fs.rmSync(dir, { recursive: true, force: true });
      const st = await repairWith('empty');
      expect(st.generation).to.equal(2);
      expect((await store.read()).ok).to.equal(true);
    });

    it('--from-backup restores the verified last good state plus a proxy block; a forged backup is refused', async () => {
      await engage('keystore:a');
      await engage('key:a/k1');
      writeState('');
      const backup = path.join(dir, BACKUP_FILE);
      const good = fs.readFileSync(backup, 'utf8');
      fs.writeFileSync(backup, good.replace('"keystore:a"', '"keystore:b"'));
      try {
        await repairWith('backup');
        expect.fail('should refuse a forged backup');
      } catch (e) {
        expect((e as Error).message).to.match(/backup unusable: .*MAC does not verify/);
      }
      fs.writeFileSync(backup, good);
      const st = await repairWith('backup');
      expect(st.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'proxy']);
      expect(st.generation).to.equal(3);
    });
  });

  describe('lock', () => {
    it('breaks a lock left by a dead process (kill -9 while holding it)', async () => {
      fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: 2 ** 22 + 12345, host: os.hostname(), at: Date.now() }));
      await engage('proxy');
      expect(fs.existsSync(path.join(dir, LOCK_FILE))).to.equal(false);
    });

    it('waits for a live holder and times out with a clear error', async () => {
      fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: process.ppid, host: os.hostname(), at: Date.now() }));
      const s = new StateStore(dir, auth, 60);
      try {
        await s.mutate((b) => ({ body: b, result: undefined }));
        expect.fail('should time out');
      } catch (e) {
        expect((e as { code?: string }).code).to.equal('lock-timeout');
      }
    });

    it('serialises concurrent writers: no change is lost', async () => {
      await Promise.all(['a', 'b', 'c', 'd', 'e'].map((k) => engage(`keystore:${k}`)));
      const r = await store.read();
      expect(r.ok && r.state.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'keystore:b', 'keystore:c', 'keystore:d', 'keystore:e']);
      expect(r.ok && r.state.generation).to.equal(5);
    });
  });
});
