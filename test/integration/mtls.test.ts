/**
 * mTLS (spec "Authentication"): only a client certificate that chains to the configured CA and
 * whose subject CN is allowed gets a request through. Test PKI made with openssl.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: 'pipe' });

function makeCa(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`], dir);
}

function makeClient(dir: string, name: string, cn: string, ca: string, validity?: { start: string; end: string }): void {
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
  if (!validity) {
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '1'], dir);
    return;
  }
  // `openssl ca` is the only stock way to pick the validity dates (an already expired certificate).
  fs.writeFileSync(path.join(dir, 'index.txt'), '');
  fs.writeFileSync(path.join(dir, 'serial'), '1000\n');
  fs.writeFileSync(path.join(dir, 'ca.cnf'), `[ca]\ndefault_ca=d\n[d]\ndatabase=${dir}/index.txt\nnew_certs_dir=${dir}\nserial=${dir}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n`);
  openssl(['ca', '-batch', '-config', 'ca.cnf', '-cert', `${ca}.pem`, '-keyfile', `${ca}.key`, '-in', `${name}.csr`, '-out', `${name}.pem`, '-startdate', validity.start, '-enddate', validity.end, '-notext'], dir);
}

describe('mTLS toward KMS', () => {
  let token: TestToken;
  let h: Harness;
  let pki: string;

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    pki = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-pki-'));
    makeCa(pki, 'kms-ca');
    makeCa(pki, 'other-ca');
    makeClient(pki, 'good', 'cks.kms.eu-west-1.amazonaws.com', 'kms-ca');
    makeClient(pki, 'wrong-subject', 'attacker.example.com', 'kms-ca');
    makeClient(pki, 'other-ca-client', 'cks.kms.eu-west-1.amazonaws.com', 'other-ca');
    makeClient(pki, 'expired', 'cks.kms.eu-west-1.amazonaws.com', 'kms-ca', { start: '20200101000000Z', end: '20200102000000Z' });
    h = await startHarness({
      server: { tls: { clientAuth: { caFile: path.join(pki, 'kms-ca.pem'), allowedSubjects: ['cks.kms.*.amazonaws.com'] } } },
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds'), keys: [] }],
    });
    writeCredential(path.join(token.dir, 'creds'));
  });

  after(async () => {
    await h?.close();
    token?.cleanup();
    if (pki) fs.rmSync(pki, { recursive: true, force: true });
  });

  function get(client?: string, tlsVersion: 'TLSv1.2' | 'TLSv1.3' = 'TLSv1.3'): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: 'localhost', port: h.proxy.port, path: '/healthz/live', method: 'GET', agent: false,
          ca: fs.readFileSync(h.certFile), maxVersion: tlsVersion, minVersion: tlsVersion,
          ...(client ? { cert: fs.readFileSync(path.join(pki, `${client}.pem`)), key: fs.readFileSync(path.join(pki, `${client}.key`)) } : {}),
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    it(`${version}: the right certificate gets through`, async () => {
      expect(await get('good', version)).to.equal(200);
    });

    const refused: [string, string | undefined][] = [
      ['a wrong subject', 'wrong-subject'],
      ['a certificate from another CA', 'other-ca-client'],
      ['an expired certificate', 'expired'],
      ['no certificate', undefined],
    ];
    for (const [name, client] of refused) {
      it(`${version}: ${name} is refused before any request is served`, async () => {
        let err: unknown;
        let status: number | undefined;
        try {
          status = await get(client, version);
        } catch (e) {
          err = e;
        }
        expect(status, 'no HTTP answer may come back').to.equal(undefined);
        expect(err).to.be.instanceOf(Error);
      });
    }
  }

  it('logs the refused subject', () => {
    expect(h.appLog()).to.include('mTLS client refused');
    expect(h.appLog()).to.include('attacker.example.com');
  });
});
