/**
 * The durable control state: round trip, corruption detection (fail closed), stale locks, repair.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { applyEngage, applyRepair, emptyState, type Actor } from '../../../src/control/state-model';
import { BACKUP_FILE, LOCK_FILE, MARKER_FILE, STATE_FILE, StateStore, canonicalJson, parseStateText } from '../../../src/control/state-store';

const alice: Actor = { operator: 'alice', via: 'admin-api' };

describe('control state store', () => {
  let dir: string;
  let store: StateStore;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-state-'));
    store = new StateStore(dir, 2000);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const engage = (scope: string) => store.mutate((b) => ({ body: applyEngage(b, scope, alice, 'test', Date.now()), result: undefined }));

  it('a fresh folder reads as fresh; the first write initialises it (0600 file, marker)', async () => {
    expect(store.read()).to.deep.equal({ ok: false, fresh: true });
    const { state } = await engage('proxy');
    expect(state.generation).to.equal(1);
    const r = store.read();
    expect(r.ok && r.state.body.blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
    expect(fs.statSync(path.join(dir, STATE_FILE)).mode & 0o777).to.equal(0o600);
    expect(fs.existsSync(path.join(dir, MARKER_FILE))).to.equal(true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).to.deep.equal([]);
  });

  it('every write increments the generation and keeps the previous file as the backup', async () => {
    await engage('proxy');
    await engage('keystore:a');
    const r = store.read();
    expect(r.ok && r.state.generation).to.equal(2);
    const prev = parseStateText(fs.readFileSync(path.join(dir, BACKUP_FILE), 'utf8'));
    expect(prev.ok && prev.state.generation).to.equal(1);
  });

  it('canonical JSON sorts keys at every level', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: 'x' } })).to.equal('{"a":{"c":"x","d":[2,{"e":0,"f":1}]},"b":1}');
  });

  describe('corruption is detected (the proxy then fails closed)', () => {
    const cases: [string, (text: string) => string | null, RegExp][] = [
      ['a truncated file', (t) => t.slice(0, Math.floor(t.length / 2)), /not valid JSON/],
      ['an empty file', () => '', /not valid JSON/],
      ['bad JSON', () => '{"format": ', /not valid JSON/],
      ['a flipped character in the body (checksum)', (t) => t.replace('"proxy"', '"proxz"'), /checksum mismatch/],
      ['a hand edit that removes a block (checksum)', (t) => { const o = JSON.parse(t); o.body.blocks = []; return JSON.stringify(o); }, /checksum mismatch/],
      ['a wrong checksum', (t) => { const o = JSON.parse(t); o.sha256 = '0'.repeat(64); return JSON.stringify(o); }, /checksum mismatch/],
      ['another format', (t) => { const o = JSON.parse(t); o.format = 'x'; return JSON.stringify(o); }, /unknown format/],
      ['a future version', (t) => { const o = JSON.parse(t); o.version = 2; return JSON.stringify(o); }, /unsupported version/],
      ['a JSON array', () => '[]', /not a JSON object/],
    ];
    for (const [name, corrupt, re] of cases) {
      it(name, async () => {
        await engage('proxy');
        const file = path.join(dir, STATE_FILE);
        fs.writeFileSync(file, corrupt(fs.readFileSync(file, 'utf8'))!);
        const r = store.read();
        expect(r.ok).to.equal(false);
        if (!r.ok && !r.fresh) expect(r.reason).to.match(re);
        else expect.fail('should be a failure, not fresh');
      });
    }

    it('an unreadable file (a folder in its place)', async () => {
      await engage('proxy');
      fs.rmSync(path.join(dir, STATE_FILE));
      fs.mkdirSync(path.join(dir, STATE_FILE));
      const r = store.read();
      expect(!r.ok && !r.fresh && r.reason).to.match(/cannot read .*EISDIR/);
    });

    it('a state file deleted after initialisation', async () => {
      await engage('proxy');
      fs.rmSync(path.join(dir, STATE_FILE));
      const r = store.read();
      expect(!r.ok && !r.fresh && r.reason).to.match(/missing, but .* was initialised/);
    });

    it('changes are refused on a broken state', async () => {
      await engage('proxy');
      fs.writeFileSync(path.join(dir, STATE_FILE), 'garbage');
      try {
        await engage('keystore:a');
        expect.fail('should refuse');
      } catch (e) {
        expect((e as { code?: string }).code).to.equal('fail-closed');
      }
      expect(fs.readFileSync(path.join(dir, STATE_FILE), 'utf8')).to.equal('garbage');
    });
  });

  describe('repair', () => {
    const repairWith = (useBackup: boolean) => store.repair(useBackup, (base, note) => applyRepair(base ?? emptyState(), { operator: 'bob', via: 'local-cli' }, 'disk fault', Date.now(), note));

    it('refuses to touch a readable state', async () => {
      await engage('keystore:a');
      try {
        await repairWith(false);
        expect.fail('should refuse');
      } catch (e) {
        expect((e as Error).message).to.match(/nothing to repair/);
      }
    });

    it('replaces a broken file with a proxy-blocked state and keeps the broken file', async () => {
      await engage('keystore:a');
      fs.writeFileSync(path.join(dir, STATE_FILE), '{"trunc');
      const st = await repairWith(false);
      expect(st.body.blocks.map((b) => b.scope)).to.deep.equal(['proxy']);
      expect(st.body.history.at(-1)).to.include({ action: 'repair', reason: 'disk fault' });
      expect(st.body.history.at(-1)!.by).to.deep.equal({ operator: 'bob', via: 'local-cli' });
      expect(store.read().ok).to.equal(true);
      expect(fs.readdirSync(dir).some((f) => f.startsWith('state.json.broken-'))).to.equal(true);
    });

    it('--from-backup restores the last good state plus a proxy block', async () => {
      await engage('keystore:a');
      await engage('key:a/k1');
      fs.writeFileSync(path.join(dir, STATE_FILE), '');
      const st = await repairWith(true);
      expect(st.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'proxy']);
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
      const s = new StateStore(dir, 60);
      try {
        await s.mutate((b) => ({ body: b, result: undefined }));
        expect.fail('should time out');
      } catch (e) {
        expect((e as { code?: string }).code).to.equal('lock-timeout');
      }
    });

    it('serialises concurrent writers: no change is lost', async () => {
      await Promise.all(['a', 'b', 'c', 'd', 'e'].map((k) => engage(`keystore:${k}`)));
      const r = store.read();
      expect(r.ok && r.state.body.blocks.map((b) => b.scope).sort()).to.deep.equal(['keystore:a', 'keystore:b', 'keystore:c', 'keystore:d', 'keystore:e']);
      expect(r.ok && r.state.generation).to.equal(5);
    });
  });
});
