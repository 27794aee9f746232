/**
 * Hot reload: key stores, credentials and TLS change without dropping connections; an invalid
 * configuration is refused with its problems and the running one stays.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { ConfigError } from '../../src/config/load';
import { createKey } from '../../src/hsm/key-admin';
import { makeTlsCert, startHarness, writeCredential, xksCall, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

describe('hot reload', () => {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  const md = { requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'DescribeKey', kmsRequestId: 'r' } };

  before(async () => {
    token = createTestToken();
    for (const label of ['xks-health', 'k1', 'k2']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    const dir = path.join(token.dir, 'creds');
    cred = writeCredential(dir);
    h = await startHarness({ hsm: { ...token.hsmConfig, pin: { file: token.pinFile } }, keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: dir, keys: [{ externalKeyId: 'k1' }] }] });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  const editConfig = (f: (c: any) => void) => {
    const c = JSON.parse(fs.readFileSync(h.configFile, 'utf8'));
    f(c);
    fs.writeFileSync(h.configFile, JSON.stringify(c, null, 2));
  };
  const fingerprint = () =>
    new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: h.proxy.port, servername: 'localhost', rejectUnauthorized: false }, () => {
        const fp = s.getPeerCertificate().fingerprint256;
        s.end();
        resolve(fp);
      });
      s.on('error', reject);
    });

  it('adds a key and a key store, serving them at once, on the same keep-alive connection', async () => {
    expect((await xksCall(h, '/a/kms/xks/v1/keys/k2/metadata', md, { cred })).status).to.equal(404);
    const credB = writeCredential(path.join(token.dir, 'creds-b'));
    editConfig((c) => {
      c.keyStores[0].keys.push({ externalKeyId: 'k2' });
      c.keyStores.push({ name: 'b', pathPrefix: '/b', credentialsDir: path.join(token.dir, 'creds-b'), keys: [{ externalKeyId: 'k1' }] });
    });
    const r = await h.proxy.reload();
    expect(r.applied).to.include('keyStores');
    expect(r.needsRestart).to.deep.equal([]);
    expect((await xksCall(h, '/a/kms/xks/v1/keys/k2/metadata', md, { cred })).status).to.equal(200);
    expect((await xksCall(h, '/b/kms/xks/v1/keys/k1/metadata', md, { cred: credB })).status).to.equal(200);
  });

  it('refuses an invalid configuration with every problem, and keeps serving the old one', async () => {
    const before = fs.readFileSync(h.configFile, 'utf8');
    editConfig((c) => {
      c.keyStores[0].keys = [{ externalKeyId: 'bad id' }];
      c.server.port = 'not a port';
    });
    let err: unknown;
    try {
      await h.proxy.reload();
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as ConfigError).problems.join('\n')).to.match(/keyStores\.0\.keys\.0\.externalKeyId/).and.to.match(/server\.port/);
    expect((await xksCall(h, '/a/kms/xks/v1/keys/k2/metadata', md, { cred })).status).to.equal(200);
    fs.writeFileSync(h.configFile, before);
  });

  it('swaps the TLS certificate for new connections', async () => {
    const old = await fingerprint();
    const fresh = makeTlsCert(fs.mkdtempSync(path.join(token.dir, 'tls-')));
    editConfig((c) => {
      c.server.tls = { certFile: fresh.certFile, keyFile: fresh.keyFile };
    });
    await h.proxy.reload();
    const now = await fingerprint();
    expect(now).not.to.equal(old);
    expect(now).to.equal(new crypto.X509Certificate(fs.readFileSync(fresh.certFile)).fingerprint256);
    // The expiry gauge follows the certificate now served (makeTlsCert: 2 days).
    const days = Number(/^xks_tls_certificate_expiry_days (\S+)$/m.exec((await h.proxy.meter.scrape()).body)![1]);
    const expected = (Date.parse(new crypto.X509Certificate(fs.readFileSync(fresh.certFile)).validTo) - Date.now()) / 86_400_000;
    expect(Math.abs(days - expected)).to.be.lessThan(0.01);
  });

  it('reports settings that only a restart applies', async () => {
    editConfig((c) => {
      c.hsm.pool = { size: 2, acquireTimeoutMs: 100 };
    });
    const r = await h.proxy.reload();
    expect(r.needsRestart).to.deep.equal(['hsm']);
  });
});
