/**
 * The HSM link heals itself (issue 9, item 2), on a REAL SoftHSM2 token:
 *
 * - the token's own files are moved away and put back (the real fault: SoftHSM2 then finds no
 *   object at all and answers CKR_OBJECT_HANDLE_INVALID / CKR_GENERAL_ERROR, see
 *   src/hsm/pkcs11-backend.ts "Recovery");
 * - next to it, a fault wrapper around the real module (test/helpers/faulty-module.ts) makes every
 *   call answer one of the codes that mean "device or session gone".
 *
 * In every case: while the HSM is unusable, Encrypt, Decrypt and GetKeyMetadata answer
 * InternalException (never KeyNotFoundException, which would tell KMS the key does not exist),
 * the deep health check says UNAVAILABLE; once the HSM is back, the backend recovers by itself,
 * with no call and no restart (the test makes none until the backend reports it is back), and
 * every operation works again with the keys it had.
 *
 * Each test opens its own backend and closes it: re-initialisation finalises the module for the
 * whole process (softhsm-token.ts rule 2), so no other backend may be open meanwhile.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { createKey } from '../../../src/hsm/key-admin';
import { ckrName } from '../../../src/hsm/ckr-table';
import { openPkcs11Backend, type Pkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../../src/log/logger';
import { HealthMonitor } from '../../../src/xks/health-monitor';
import { captureLogger } from '../../helpers/capture-logger';
import { FaultyModule } from '../../helpers/faulty-module';
import { rawRequest, startHarness, writeCredential, xksCall } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { expectXks } from '../../helpers/xks-expect';
import { wrappedModule } from '../../helpers/wrapped-module';

const KEY = 'k-heal';
const HEALTH_KEY = 'xks-health';

/**
 * Resolves once `cond()` holds, checked every few ms after `probe()`; rejects after `boundMs` (a
 * bound on the wait, not a timed assertion).
 */
async function until(cond: () => boolean, what: string, boundMs = 10000, probe: () => Promise<unknown> = async () => undefined): Promise<void> {
  const end = Date.now() + boundMs;
  for (;;) {
    await probe();
    if (cond()) return;
    if (Date.now() > end) throw new Error(`still not ${what} after ${boundMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Resolves the next time the backend reports `available`. */
function nextAvailability(b: Pkcs11Backend, available: boolean): Promise<void> {
  return new Promise((resolve) => b.onAvailabilityChange((a) => a === available && resolve()));
}

describe('the HSM link heals itself (real SoftHSM2)', function () {
  this.timeout(60000);
  let tk: TestToken;
  let backend: Pkcs11Backend | undefined;
  let health: HealthMonitor;
  const aad = Buffer.from('aad');

  before(async () => {
    tk = createTestToken();
    await createKey(tk.hsmConfig, tk.pin, { label: HEALTH_KEY, usage: 'encrypt-decrypt' });
    await createKey(tk.hsmConfig, tk.pin, { label: KEY, usage: 'encrypt-decrypt' });
  });

  afterEach(async () => {
    await backend?.close();
    backend = undefined;
  });

  after(() => tk?.cleanup());

  async function open(faulty?: FaultyModule, log = createSilentLogger()): Promise<Pkcs11Backend> {
    // A short retry so that the test does not wait long; nothing here depends on how long.
    backend = await openPkcs11Backend({ ...tk.hsmConfig, recoveryIntervalMs: 20 }, tk.pin, log, faulty ? wrappedModule(faulty.wrap) : undefined);
    health = new HealthMonitor(backend, { healthKeyLabel: HEALTH_KEY, intervalMs: 50000, degradedAboveMs: 250 }, createSilentLogger());
    return backend;
  }

  /** What KMS would see during the outage: InternalException for every operation, every key. */
  async function expectUnavailable(b: Pkcs11Backend, old: { ciphertext: Buffer; iv: Buffer; tag: Buffer }): Promise<void> {
    await expectXks(b.encrypt(KEY, Buffer.from('x'), aad), 'InternalException');
    await expectXks(b.decrypt(KEY, old.ciphertext, old.iv, old.tag, aad), 'InternalException');
    await expectXks(b.describeKey(KEY), 'InternalException');
    // Not even an unknown key is "not found": an unusable token cannot say what it lacks.
    await expectXks(b.describeKey('no-such-key'), 'InternalException');
    const h = await health.check();
    expect(h.status).to.equal('UNAVAILABLE');
    expect(h.errorName).to.equal('InternalException');
  }

  /** Everything works again, with the same keys, and a key that is truly absent is not found. */
  async function expectServing(b: Pkcs11Backend, pt: Buffer, old: { ciphertext: Buffer; iv: Buffer; tag: Buffer }): Promise<void> {
    expect((await b.decrypt(KEY, old.ciphertext, old.iv, old.tag, aad)).equals(pt)).to.equal(true);
    const r = await b.encrypt(KEY, pt, aad);
    expect((await b.decrypt(KEY, r.ciphertext, r.iv, r.tag, aad)).equals(pt)).to.equal(true);
    expect(await b.describeKey(KEY)).to.deep.equal({ label: KEY, keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'] });
    await expectXks(b.describeKey('no-such-key'), 'KeyNotFoundException');
    expect((await health.check()).status).to.equal('ACTIVE');
  }

  it("the token's files moved away: InternalException, never KeyNotFoundException; back by itself once the files are back", async () => {
    const b = await open();
    const pt = randomBytes(32);
    const old = await b.encrypt(KEY, pt, aad); // the key handle is cached now
    expect((await health.check()).status).to.equal('ACTIVE');
    const down = nextAvailability(b, false);
    const files = tk.filesDir();
    const away = path.join(tk.dir, 'moved-away');
    fs.renameSync(files, away);
    try {
      await expectUnavailable(b, old);
      await down;
    } finally {
      const up = nextAvailability(b, true);
      fs.renameSync(away, files);
      // No call until the backend says it is back: the recovery is its own.
      await up;
    }
    await expectServing(b, pt, old);
  });

  it('the health monitor follows by itself: UNAVAILABLE when the token goes, ACTIVE when it is back', async () => {
    const b = await open();
    await b.encrypt(KEY, Buffer.from('x'), aad);
    expect((await health.check()).status).to.equal('ACTIVE');
    const files = tk.filesDir();
    const away = path.join(tk.dir, 'moved-away');
    fs.renameSync(files, away);
    try {
      await expectXks(b.encrypt(KEY, Buffer.from('x'), aad), 'InternalException');
      // The monitor checks on the backend's notice: its interval (50 s) is far beyond the bound.
      await until(() => health.cached()?.status === 'UNAVAILABLE', 'UNAVAILABLE');
    } finally {
      fs.renameSync(away, files);
    }
    await until(() => health.cached()?.status === 'ACTIVE', 'ACTIVE again');
  });

  it('through the real proxy over HTTPS: 500 InternalException (not 404) during the outage, readiness 503, then 200 again without a restart', async () => {
    const b = await open();
    const credDir = path.join(tk.dir, 'creds');
    const cred = writeCredential(credDir);
    // The deep check's own interval (50 s) is beyond every bound below: only the backend's notice moves it.
    const h = await startHarness(
      { hsm: { ...tk.hsmConfig, pin: { file: tk.pinFile } }, health: { intervalMs: 50000 }, keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: credDir, keys: [{ externalKeyId: KEY }] }] },
      { hsm: b },
    );
    const md = (kmsOperation: string) => ({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation, kmsRequestId: 'r' } });
    const encrypt = () => xksCall(h, `/a/kms/xks/v1/keys/${KEY}/encrypt`, { ...md('Encrypt'), plaintext: 'eA==', encryptionAlgorithm: 'AES_GCM' }, { cred });
    const ready = async () => (await rawRequest(h, { method: 'GET', path: '/healthz/ready' })).status;
    try {
      const enc = await encrypt();
      expect(enc.status).to.equal(200);
      const decrypt = () => xksCall(h, `/a/kms/xks/v1/keys/${KEY}/decrypt`, { ...md('Decrypt'), ciphertext: enc.json.ciphertext, initializationVector: enc.json.initializationVector, authenticationTag: enc.json.authenticationTag, encryptionAlgorithm: 'AES_GCM' }, { cred });
      const metadata = () => xksCall(h, `/a/kms/xks/v1/keys/${KEY}/metadata`, md('DescribeKey'), { cred });
      const files = tk.filesDir();
      const away = path.join(tk.dir, 'moved-away');
      fs.renameSync(files, away);
      try {
        for (const f of [encrypt, decrypt, metadata, encrypt]) {
          const r = await f();
          expect([r.status, r.json.errorName]).to.deep.equal([500, 'InternalException']);
        }
        let status = 0;
        await until(() => status === 503, 'not ready', 10000, async () => (status = await ready()));
      } finally {
        fs.renameSync(away, files);
      }
      let status = 0;
      await until(() => status === 200, 'ready again', 10000, async () => (status = await ready()));
      for (const f of [encrypt, decrypt, metadata]) expect((await f()).status).to.equal(200);
    } finally {
      await h.close();
    }
  });

  describe('fault wrapper around the real module: every call answers a "device or session gone" code', () => {
    /** Serves, then `inject`s the fault: unavailable while it lasts; back by itself once plugged in. */
    async function throughFault(inject: (f: FaultyModule) => void, afterRecovery: (f: FaultyModule) => void = () => undefined): Promise<void> {
      const faulty = new FaultyModule();
      const b = await open(faulty);
      const pt = randomBytes(32);
      const old = await b.encrypt(KEY, pt, aad);
      const down = nextAvailability(b, false);
      inject(faulty);
      await expectUnavailable(b, old);
      await down;
      const up = nextAvailability(b, true);
      faulty.plugIn();
      await up; // no call until the backend says it is back: the recovery is its own
      afterRecovery(faulty);
      await expectServing(b, pt, old);
    }

    const CODES = [pkcs11js.CKR_DEVICE_REMOVED, pkcs11js.CKR_TOKEN_NOT_PRESENT, pkcs11js.CKR_DEVICE_ERROR, pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11js.CKR_SESSION_HANDLE_INVALID];
    for (const code of CODES) {
      it(`${ckrName(code)}: InternalException while it lasts, recovered in the background when the module answers again`, async () => {
        await throughFault((f) => f.unplug(code));
      });
    }

    it('CKR_SESSION_HANDLE_INVALID on every session, even a fresh one: the link is re-initialised', async () => {
      // Sessions open, but every use of one says it is gone (a network HSM that dropped us).
      await throughFault((f) => f.unplug(pkcs11js.CKR_SESSION_HANDLE_INVALID, ['C_FindObjectsInit', 'C_EncryptInit', 'C_DecryptInit', 'C_GetAttributeValue', 'C_Encrypt', 'C_Decrypt']));
    });

    it('CKR_OBJECT_HANDLE_INVALID after a token change: InternalException, never KeyNotFoundException, until re-initialised', async () => {
      // plugIn() heals it only through C_Finalize + C_Initialize, as with SoftHSM2.
      await throughFault(
        (f) => f.tokenSwapped(),
        (f) => expect(f.count('C_Initialize')).to.be.greaterThan(0),
      );
    });

    it('a token that comes back but refuses the PIN: recovery stops instead of using up the PIN attempts', async () => {
      const faulty = new FaultyModule();
      const cap = captureLogger();
      const b = await open(faulty, cap.log);
      await b.encrypt(KEY, Buffer.from('x'), aad);
      faulty.unplug(pkcs11js.CKR_DEVICE_REMOVED);
      await expectXks(b.encrypt(KEY, Buffer.from('x'), aad), 'InternalException');
      // Back, but every login is refused (as after a PIN change on the HSM).
      const logins = faulty.count('C_Login');
      faulty.unplug(pkcs11js.CKR_PIN_INCORRECT, ['C_Login']);
      await until(() => cap.lines.some((l) => l.includes('HSM recovery stopped')), 'stopped');
      expect(faulty.count('C_Login')).to.equal(logins + 1, 'one refused login, not one per retry');
      // White-box, to avoid waiting for something not to happen: no retry is scheduled.
      expect((b as unknown as { recoveryTimer: unknown }).recoveryTimer).to.equal(undefined);
      await expectXks(b.encrypt(KEY, Buffer.from('x'), aad), 'InternalException');
      expect(cap.lines.join('\n')).to.not.include(tk.pin);
    });
  });
});
