/**
 * The admin listener exposed beyond loopback: TLS is required, and with clientCaFile only clients
 * with a certificate from that CA complete the handshake; the operator JWT is still required.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { ConfigError, parseConfig } from '../../../src/config/load';
import { createKey } from '../../../src/hsm/key-admin';
import { createStateKey } from '../../helpers/state-hsm';
import { collectResponse } from '../../../src/util/http-response';
import { makeTlsCert, startHarness, writeCredential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { AUDIENCE, makeOperators, type Operators } from './admin-helpers';

describe('admin listener over TLS with client certificates', () => {
  let token: TestToken;
  let h: Harness;
  let ops: Operators;
  let pki: string;
  let serverCert: { certFile: string; keyFile: string };

  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createStateKey(token);
    pki = fs.mkdtempSync(path.join(token.dir, 'pki-'));
    const ssl = (args: string[]) => execFileSync('openssl', args, { cwd: pki, stdio: 'pipe' });
    ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=admin-ca']);
    ssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'op.key', '-out', 'op.csr', '-subj', '/CN=alice']);
    ssl(['x509', '-req', '-in', 'op.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'op.pem', '-days', '1']);
    serverCert = makeTlsCert(fs.mkdtempSync(path.join(token.dir, 'admin-tls-')));
    ops = await makeOperators(token.dir, { alice: ['operator'] });
    writeCredential(path.join(token.dir, 'creds'));
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: path.join(token.dir, 'creds') }],
      control: {
        stateDir: path.join(token.dir, 'state'),
        admin: { host: '127.0.0.1', port: 0, audience: AUDIENCE, jwksFile: ops.jwksFile, tls: { ...serverCert, clientCaFile: path.join(pki, 'ca.pem') } },
      },
    });
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  function get(withClientCert: boolean, bearer?: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: 'localhost', port: h.proxy.adminPort, path: '/admin/v1/state', method: 'GET', agent: false,
          ca: fs.readFileSync(serverCert.certFile),
          ...(withClientCert ? { cert: fs.readFileSync(path.join(pki, 'op.pem')), key: fs.readFileSync(path.join(pki, 'op.key')) } : {}),
          headers: bearer ? { authorization: `Bearer ${bearer}` } : {},
        },
        (res) => collectResponse(res).then((r) => resolve(r.status), reject),
      );
      req.on('error', reject);
      req.end();
    });
  }

  it('serves an operator with a client certificate and a valid token', async () => {
    expect(await get(true, await ops.token('alice'))).to.equal(200);
  });

  it('still requires the operator token with a client certificate', async () => {
    expect(await get(true)).to.equal(401);
  });

  it('refuses the handshake without a client certificate', async () => {
    let err: unknown;
    try {
      await get(false, await ops.token('alice'));
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(Error);
  });

  it('refuses plain HTTP on a non-loopback admin address in the configuration', () => {
    const raw = {
      server: { plainHttp: true },
      hsm: { module: '/x.so', tokenLabel: 't', pin: { env: 'P' } },
      keyStores: [{ name: 'a', pathPrefix: '', credentialsDir: '/tmp/x' }],
      control: { stateDir: '/tmp/s', admin: { host: '0.0.0.0', audience: 'a', jwksFile: '/tmp/j' } },
    };
    expect(() => parseConfig(raw, '/tmp/c.yaml', {})).to.throw(ConfigError, /control\.admin\.tls: required when admin\.host is not a loopback address/);
  });
});
