/**
 * Secret hygiene against the real proxy on a real SoftHSM2 token:
 *  - `serve` refuses to start when the PIN file or the audit signing key is readable by others,
 *    and says which file and the chmod to run;
 *  - a reload with such a credential file is refused, the running configuration stays, and the
 *    periodic credential re-read leaves the file out; after the chmod the reload applies;
 *  - hsm.moduleEnv values never appear in any output of `serve` (a start and a failed start);
 *  - /metrics on the admin listener: absent by default, and with metrics.adminListener
 *    "authenticated" only for an admin token.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { ConfigError } from '../../src/config/load';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, xksCall, type Harness } from '../helpers/proxy-harness';
import { DEFAULT_CLI, serveFixture, type ServeFixture } from '../helpers/serve-process';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';
import { createStateKey } from '../helpers/state-hsm';
import { AUDIENCE, adminRaw, makeOperators } from './control/admin-helpers';

/** Runs `serve` until it listens (then SIGTERM) or exits; everything it printed. */
function serveOutput(configFile: string, env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; out: string; listened: boolean }> {
  const child = spawn(process.execPath, [DEFAULT_CLI, 'serve', '--config', configFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let listened = false;
  const seen = (c: Buffer) => {
    out += c.toString();
    if (!listened && out.includes('"message":"xks proxy listening"')) {
      listened = true;
      child.kill('SIGTERM');
    }
  };
  child.stdout.on('data', seen);
  child.stderr.on('data', seen);
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, listened })));
}

describe('secret hygiene', function () {
  this.timeout(60_000);
  let token: TestToken;
  let fx: ServeFixture;
  let config: Record<string, any>;

  before(async () => {
    token = createTestToken();
    fx = await serveFixture(token, path.join(token.dir, 'proxy'));
    config = JSON.parse(fs.readFileSync(fx.configFile, 'utf8'));
  });
  after(() => token?.cleanup());

  for (const [name, file] of [
    ['the HSM PIN file', () => token.pinFile],
    ['the audit signing key', () => config.audit.signingKeyFile as string],
  ] as const) {
    it(`serve refuses to start when ${name} is readable by others, naming the file and the chmod`, async () => {
      fs.chmodSync(file(), 0o644);
      try {
        const r = await serveOutput(fx.configFile);
        expect(r.listened, r.out).to.equal(false);
        expect(r.code).to.not.equal(0);
        expect(r.out).to.include(`${file()} is accessible to group or others (mode 0644); run: chmod 600 ${file()}`);
      } finally {
        fs.chmodSync(file(), 0o600);
      }
      expect((await serveOutput(fx.configFile)).listened).to.equal(true);
    });
  }

  it('never prints hsm.moduleEnv values: neither on a start nor on a failed start', async () => {
    const canary = `canary-${crypto.randomBytes(8).toString('hex')}`;
    const withCanary = (over: Record<string, unknown>) => {
      const f = path.join(fx.dir, `canary-${crypto.randomBytes(4).toString('hex')}.json`);
      fs.writeFileSync(f, JSON.stringify({ ...config, hsm: { ...config.hsm, moduleEnv: { ...config.hsm.moduleEnv, VENDOR_CLIENT_PASSWORD: canary }, ...over } }));
      return f;
    };
    const ok = await serveOutput(withCanary({}));
    expect(ok.listened, ok.out).to.equal(true);
    expect(ok.out).not.to.include(canary);
    expect(ok.out).not.to.include(token.confPath);
    const bad = await serveOutput(withCanary({ tokenLabel: 'no-such-token' }));
    expect(bad.listened).to.equal(false);
    expect(bad.out).to.include('VENDOR_CLIENT_PASSWORD');
    expect(bad.out).not.to.include(canary);
    expect(bad.out).not.to.include(token.confPath);
  });

  describe('reload', () => {
    let h: Harness;
    let credDir: string;
    before(async () => {
      await createKey(token.hsmConfig, token.pin, { label: 'k2', usage: 'encrypt-decrypt' });
      credDir = path.join(token.dir, 'creds-reload');
      writeCredential(credDir);
      h = await startHarness({
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
        keyStores: [{ name: 'r', pathPrefix: '/r', credentialsDir: credDir, keys: [{ externalKeyId: 'k2' }] }],
        sigv4: { reloadIntervalMs: 100 },
      });
    });
    after(async () => h?.close());

    const encrypt = (cred: { accessKeyId: string; secret: string }) =>
      xksCall(h, '/r/kms/xks/v1/keys/k2/encrypt', { requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() }, plaintext: 'aGVsbG8=', encryptionAlgorithm: 'AES_GCM' }, { cred });

    it('refuses a reload while a credential file is readable by others; the running configuration stays; after chmod 600 it applies', async () => {
      const good = writeCredential(credDir);
      const leaked = writeCredential(credDir);
      const leakedFile = path.join(credDir, `${leaked.accessKeyId}.secret`);
      fs.chmodSync(leakedFile, 0o644);
      let err: unknown;
      await h.proxy.reload().catch((e: unknown) => (err = e));
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).problems.join('\n')).to.include(`${leakedFile} is accessible to group or others (mode 0644); run: chmod 600 ${leakedFile}`);
      // The periodic credential re-read (every 100 ms here) takes the good file and leaves the
      // leaked one out: wait until the good one is served, then the leaked one must be refused.
      for (let i = 0; i < 100 && (await encrypt(good)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50));
      expect((await encrypt(good)).status).to.equal(200);
      expect((await encrypt(leaked)).status).to.equal(401);
      expect(h.appLog()).to.include('chmod 600');
      fs.chmodSync(leakedFile, 0o600);
      await h.proxy.reload();
      expect((await encrypt(leaked)).status).to.equal(200);
    });
  });

  describe('/metrics on the admin listener', () => {
    let off: Harness;
    let on: Harness;
    let ops: Awaited<ReturnType<typeof makeOperators>>;
    before(async () => {
      await createKey(token.hsmConfig, token.pin, { label: 'k3', usage: 'encrypt-decrypt' });
      await createStateKey(token);
      ops = await makeOperators(token.dir, { alice: ['operator'], audrey: ['auditor'] });
      const base = (name: string, over: Record<string, unknown>) => ({
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
        keyStores: [{ name: 'm', pathPrefix: '/m', credentialsDir: path.join(token.dir, 'creds-m'), keys: [{ externalKeyId: 'k3' }] }],
        // Two state folders on one token: each needs a generation record of its own.
        control: { stateDir: path.join(token.dir, `state-${name}`), stateAuth: { anchorLabel: `generation-${name}` }, admin: { port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile } },
        ...over,
      });
      writeCredential(path.join(token.dir, 'creds-m'));
      off = await startHarness(base('off', {}));
      on = await startHarness(base('on', { metrics: { adminListener: 'authenticated' } }));
    });
    after(async () => {
      await off?.close();
      await on?.close();
    });

    const getText = (port: number, tok?: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        http.get({ host: '127.0.0.1', port, path: '/metrics', headers: tok ? { authorization: `Bearer ${tok}` } : {} }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        }).on('error', reject);
      });

    it('is not served by default, not even with a token', async () => {
      expect((await getText(off.proxy.adminPort!)).status).to.equal(404);
      expect((await getText(off.proxy.adminPort!, await ops.token('audrey'))).status).to.equal(404);
    });

    it('with adminListener "authenticated": 401 without a token, 200 for an auditor or operator token', async () => {
      const anon = await getText(on.proxy.adminPort!);
      expect(anon.status).to.equal(401);
      expect(anon.text).not.to.include('xks_');
      expect((await adminRaw(on.proxy.adminPort!, 'GET', '/metrics', 'not.a.jwt')).status).to.equal(401);
      const auditor = await getText(on.proxy.adminPort!, await ops.token('audrey'));
      expect(auditor.status).to.equal(200);
      expect(auditor.text).to.include('xks_build_info');
      expect((await getText(on.proxy.adminPort!, await ops.token('alice'))).status).to.equal(200);
    });
  });
});
