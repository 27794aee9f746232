/**
 * Start-up refuses a broken HSM set-up with a clear message; a failing HSM at run time gives the
 * spec's errors and never crashes the process. Fault injection wraps the real backend.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { parseConfig } from '../../src/config/load';
import { XksError } from '../../src/errors/xks-error';
import type { HsmBackend } from '../../src/hsm/backend';
import { DelegatingBackend } from '../../src/hsm/delegating-backend';
import { createKey } from '../../src/hsm/key-admin';
import { openPkcs11Backend } from '../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../src/log/logger';
import { StartupError, startProxy } from '../../src/main';
import { FaultyModule } from '../helpers/faulty-module';
import { ivEmulator } from '../helpers/iv-emulating-module';
import { rawRequest, startHarness, writeCredential, xksCall, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';
import { wrappedModule } from '../helpers/wrapped-module';

/** The real backend, with a switch that makes every HSM call fail the way we choose. */
class FaultInjectingBackend extends DelegatingBackend {
  fault: (() => never) | undefined;
  private guard(): void {
    if (this.fault) this.fault();
  }
  override async describeKey(label: string) {
    this.guard();
    return super.describeKey(label);
  }
  override async encrypt(label: string, p: Buffer, aad: Buffer) {
    this.guard();
    return super.encrypt(label, p, aad);
  }
  override async decrypt(label: string, c: Buffer, iv: Buffer, tag: Buffer, aad: Buffer) {
    this.guard();
    return super.decrypt(label, c, iv, tag, aad);
  }
}

describe('start-up checks and HSM faults', () => {
  let token: TestToken;
  before(async () => {
    token = createTestToken({ label: 'xks-faults-it' });
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'health-encrypt-only', usage: 'encrypt' });
  });
  after(() => token?.cleanup());

  const configWith = (hsm: Record<string, unknown>) =>
    parseConfig(
      {
        server: { host: '127.0.0.1', port: 0, plainHttp: true },
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile }, ...hsm },
        keyStores: [{ name: 'a', pathPrefix: '/a', credentials: [{ accessKeyId: 'AAAAAAAAAAAAAAAAAAAA', secret: { env: 'NOPE' } }] }],
        log: { requestLogStdout: false },
      },
      '/tmp/xks-test.yaml',
      {},
    );

  async function startupError(hsm: Record<string, unknown>, backend?: HsmBackend): Promise<string> {
    try {
      const p = await startProxy(configWith(hsm), { log: createSilentLogger(), ...(backend ? { hsm: backend } : {}) });
      await p.close();
    } catch (e) {
      expect(e).to.be.instanceOf(StartupError);
      return (e as Error).message;
    }
    return expect.fail('start-up should have failed') as never;
  }

  it('refuses a wrong PIN without printing it', async () => {
    const pinFile = path.join(token.dir, 'wrong-pin');
    fs.writeFileSync(pinFile, 'wrong-pin-987654\n', { mode: 0o600 });
    const msg = await startupError({ pin: { file: pinFile } });
    expect(msg).to.match(/PIN/i);
    expect(msg).not.to.include('wrong-pin-987654');
  });

  it('refuses a missing PIN file and an unset PIN variable', async () => {
    expect(await startupError({ pin: { file: path.join(token.dir, 'absent') } })).to.match(/cannot read secret file .*absent \(ENOENT\)/);
    expect(await startupError({ pin: { env: 'XKS_TEST_UNSET_PIN_VAR' } })).to.match(/XKS_TEST_UNSET_PIN_VAR is not set/);
  });

  it('refuses an unknown token label and lists the ones it found', async () => {
    expect(await startupError({ tokenLabel: 'no-such-token' })).to.match(/no-such-token/);
  });

  it('refuses a module that cannot be loaded', async () => {
    expect(await startupError({ module: '/nonexistent/libpkcs11.so' })).to.match(/\/nonexistent\/libpkcs11\.so/);
  });

  it('refuses to start without a working health key, and says how to create it', async () => {
    expect(await startupError({ healthKeyLabel: 'no-health-key' })).to.match(/keys create --label no-health-key/);
  });

  it('refuses a health key that may not decrypt, and says what it must be', async () => {
    const msg = await startupError({ healthKeyLabel: 'health-encrypt-only' });
    expect(msg).to.match(/InvalidKeyUsageException/);
    expect(msg).to.match(/must be an AES-256 key that may encrypt and decrypt/);
  });

  describe('refuses an hsm.ivMode that does not match how the HSM produces the GCM IV, naming hsm.ivMode', () => {
    for (const ivMode of ['hsm-params', 'hsm-appended']) {
      it(`"${ivMode}" on SoftHSM2, which uses the IV it is given`, async () => {
        const msg = await startupError({ ivMode });
        expect(msg).to.match(new RegExp(`deep health check .* failed \\(InternalException: hsm\\.ivMode "${ivMode}" does not match the HSM`));
        expect(msg).to.include(`Check hsm.ivMode (now "${ivMode}")`);
        expect(msg).not.to.match(/keys create/);
      });
    }

    it('"proxy" on an HSM that appends its own IV (emulated Luna in FIPS mode)', async () => {
      const emu = ivEmulator({ mode: 'hsm-appended', ivBytes: 16 });
      const backend = await openPkcs11Backend({ ...token.hsmConfig }, token.pin, createSilentLogger(), wrappedModule(emu.wrap));
      const msg = await startupError({}, backend); // start-up closes the backend it was given
      expect(msg).to.match(/InternalException: CKR_BUFFER_TOO_SMALL/);
      expect(msg).to.include('Check hsm.ivMode (now "proxy")');
      expect(msg).to.include('"hsm-appended" if it appends it to the output');
    });
  });

  describe('with an HSM that starts failing', () => {
    let h: Harness;
    let faulty: FaultInjectingBackend;
    /** Around the real module: holds HSM calls that should not return (a hung network HSM). */
    let net: FaultyModule;
    let cred: Credential;
    before(async () => {
      net = new FaultyModule();
      // Async calls with a deadline (hsm.callTimeoutMs) far above what an unheld call takes.
      const real = await openPkcs11Backend({ ...token.hsmConfig, callMode: 'async', callTimeoutMs: 2000 }, token.pin, createSilentLogger(), wrappedModule(net.wrap));
      faulty = new FaultInjectingBackend(real);
      const credDir = path.join(token.dir, 'creds');
      cred = writeCredential(credDir);
      h = await startHarness({ hsm: { ...token.hsmConfig, pin: { file: token.pinFile } }, keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: credDir, keys: [{ externalKeyId: 'k1' }] }] }, { hsm: faulty });
    });
    after(async () => {
      faulty.fault = undefined;
      net.holdAsync(false);
      net.releaseHeld();
      await h?.close();
    });

    const encryptBody = { requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'Encrypt', kmsRequestId: 'r' }, plaintext: 'eA==', encryptionAlgorithm: 'AES_GCM' };

    it('a dependency timeout is 503 DependencyTimeoutException: the HSM does not answer within hsm.callTimeoutMs', async () => {
      net.holdAsync();
      try {
        const r = await xksCall(h, '/a/kms/xks/v1/keys/k1/encrypt', encryptBody, { cred });
        expect(r.status).to.equal(503);
        expect(r.json.errorName).to.equal('DependencyTimeoutException');
        expect(net.heldCount()).to.be.greaterThan(0, 'a real C_EncryptAsync was still on the HSM');
      } finally {
        net.holdAsync(false);
        net.releaseHeld();
      }
      // The session comes back once the late call returns: the next request is served.
      expect((await xksCall(h, '/a/kms/xks/v1/keys/k1/encrypt', encryptBody, { cred })).status).to.equal(200);
    });

    it('an unexpected error is 500 InternalException without internal detail, and the process keeps serving', async () => {
      faulty.fault = () => {
        throw new TypeError('internal secret detail /var/lib/something');
      };
      const r = await xksCall(h, '/a/kms/xks/v1/keys/k1/encrypt', encryptBody, { cred });
      expect(r.status).to.equal(500);
      expect(r.json.errorName).to.equal('InternalException');
      expect(r.text).not.to.include('internal secret detail');
      faulty.fault = undefined;
      expect((await xksCall(h, '/a/kms/xks/v1/keys/k1/encrypt', encryptBody, { cred })).status).to.equal(200);
    });

    it('an unavailable HSM makes GetHealthStatus InternalException and readiness 503, and both recover', async () => {
      faulty.fault = () => {
        throw new XksError('InternalException', undefined, 'injected: token removed');
      };
      expect((await h.proxy.health.check()).status).to.equal('UNAVAILABLE');
      const health = { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } };
      const r = await xksCall(h, '/a/kms/xks/v1/health', health, { cred });
      expect(r.status).to.equal(500);
      expect(r.json.errorName).to.equal('InternalException');
      expect((await rawRequest(h, { method: 'GET', path: '/healthz/ready' })).status).to.equal(503);
      expect((await rawRequest(h, { method: 'GET', path: '/healthz/live' })).status).to.equal(200);
      faulty.fault = undefined;
      // Back: ACTIVE, or DEGRADED when the machine is loaded enough for the deep check to take over
      // health.degradedAboveMs (a timing, not the recovery under test).
      expect((await h.proxy.health.check()).status).to.be.oneOf(['ACTIVE', 'DEGRADED']);
      expect((await xksCall(h, '/a/kms/xks/v1/health', health, { cred })).status).to.equal(200);
      expect((await rawRequest(h, { method: 'GET', path: '/healthz/ready' })).status).to.equal(200);
    });
  });
});
