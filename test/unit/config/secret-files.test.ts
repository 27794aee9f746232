/**
 * Secret hygiene: files holding the HSM PIN, SigV4 secrets, the audit signing key and operator
 * private keys are refused when group or others may access them (the message names the file, the
 * setting and the exact chmod); so are folders that let others swap them, a credentials folder
 * others may add to, and an operator JWKS others may write. Refused in parseConfig, so at start-up
 * and at reload alike, and by each reader on its own.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateOperatorKey, readPrivateJwk, writeOperatorKey } from '../../../src/admin/tokens';
import { generateSigningKeyPair, loadSigningKey } from '../../../src/audit/signing';
import { ConfigError, parseConfig } from '../../../src/config/load';
import { readSecret } from '../../../src/config/secrets';
import { noTokenMessage } from '../../../src/hsm/pkcs11-token';

describe('secret files must be private', () => {
  let dir: string;
  let pinFile: string;
  let credDir: string;
  let secretFile: string;
  let auditKey: string;
  let jwks: string;
  let tlsKey: string;
  let adminTlsKey: string;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-secrets-'));
    pinFile = path.join(dir, 'pin');
    fs.writeFileSync(pinFile, '1234', { mode: 0o600 });
    credDir = path.join(dir, 'creds');
    fs.mkdirSync(credDir, { mode: 0o700 });
    secretFile = path.join(credDir, 'AAAAAAAAAAAAAAAAAAAA2345.secret');
    fs.writeFileSync(secretFile, 'x'.repeat(44), { mode: 0o600 });
    auditKey = path.join(dir, 'keys', 'audit.jwk');
    await generateSigningKeyPair(auditKey, path.join(dir, 'keys', 'audit.pub.jwk'));
    jwks = path.join(dir, 'operators.jwks.json');
    fs.writeFileSync(jwks, '{"keys":[]}', { mode: 0o644 });
    // Not parsed at config load: only the modes matter here.
    tlsKey = path.join(dir, 'tls-key.pem');
    fs.writeFileSync(tlsKey, 'not a key', { mode: 0o600 });
    adminTlsKey = path.join(dir, 'admin-key.pem');
    fs.writeFileSync(adminTlsKey, 'not a key', { mode: 0o600 });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const raw = () => ({
    server: { tls: { certFile: path.join(dir, 'cert.pem'), keyFile: tlsKey } },
    hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { file: pinFile } },
    keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: credDir, credentials: [{ accessKeyId: 'BBBBBBBBBBBBBBBBBBBB2345', secret: { file: secretFile } }], keys: [{ externalKeyId: 'k1' }] }],
    audit: { file: path.join(dir, 'audit', 'audit.log'), signingKeyFile: auditKey },
    control: { stateDir: path.join(dir, 'state'), admin: { audience: 'x', jwksFile: jwks, tls: { certFile: path.join(dir, 'admin-cert.pem'), keyFile: adminTlsKey } } },
  });
  function problems(): string[] {
    try {
      parseConfig(raw(), path.join(dir, 'config.yaml'), {});
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      return (e as ConfigError).problems;
    }
    return [];
  }

  it('accepts files of mode 0600 in private folders (and a JWKS of mode 0644)', () => {
    expect(problems()).to.deep.equal([]);
  });

  const cases: [string, () => string, RegExp][] = [
    ['the HSM PIN file', () => pinFile, /the HSM PIN file \(hsm\.pin\.file\)/],
    ['an inline SigV4 secret file', () => secretFile, /keyStores\.0\.credentials\.0\.secret\.file/],
    ['the audit signing key', () => auditKey, /the audit signing key \(audit\.signingKeyFile\)/],
    ['the TLS private key', () => tlsKey, /the TLS private key \(server\.tls\.keyFile\)/],
    ['the admin listener TLS private key', () => adminTlsKey, /control\.admin\.tls\.keyFile/],
  ];
  for (const [name, file, setting] of cases) {
    for (const mode of [0o640, 0o604, 0o644, 0o660]) {
      it(`refuses ${name} with mode 0${mode.toString(8)}, naming the file, the setting and the chmod`, () => {
        fs.chmodSync(file(), mode);
        const p = problems().join('\n');
        expect(p).to.match(setting);
        expect(p).to.include(`${file()} is accessible to group or others (mode 0${mode.toString(8)}); run: chmod 600 ${file()}`);
      });
    }
  }

  it('refuses an etcd client key and an etcd password file that others may read (fleet mode)', () => {
    const etcdKey = path.join(dir, 'etcd-client-key.pem');
    const etcdPassword = path.join(dir, 'etcd-password');
    fs.writeFileSync(etcdKey, 'not a key', { mode: 0o640 });
    fs.writeFileSync(etcdPassword, 'pw', { mode: 0o604 });
    const fleet = { ...raw(), control: { ...raw().control, store: 'etcd', etcd: { endpoints: ['https://127.0.0.1:2379'], tls: { caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'etcd-client.pem'), keyFile: etcdKey }, auth: { username: 'xks', passwordFile: etcdPassword } } } };
    let p: string[] = [];
    try {
      parseConfig(fleet, path.join(dir, 'config.yaml'), {});
    } catch (e) {
      p = (e as ConfigError).problems;
    }
    expect(p.join('\n')).to.include(`the etcd client key (control.etcd.tls.keyFile) ${etcdKey} is accessible to group or others (mode 0640); run: chmod 600 ${etcdKey}`);
    expect(p.join('\n')).to.include(`the etcd password file (control.etcd.auth.passwordFile) ${etcdPassword} is accessible to group or others (mode 0604)`);
    fs.chmodSync(etcdKey, 0o600);
    fs.chmodSync(etcdPassword, 0o600);
    expect(() => parseConfig(fleet, path.join(dir, 'config.yaml'), {})).not.to.throw();
  });

  it('refuses a *.secret file in a credentials folder that others may read', () => {
    const other = path.join(credDir, 'CCCCCCCCCCCCCCCCCCCC2345.secret');
    fs.writeFileSync(other, 'y'.repeat(44), { mode: 0o644 });
    expect(problems().join('\n')).to.include(`${other} is accessible to group or others (mode 0644); run: chmod 600 ${other}`);
  });

  it('refuses a credentials folder that others may write to, even with the sticky bit (a new file is a new credential)', () => {
    fs.chmodSync(credDir, 0o1777);
    expect(problems().join('\n')).to.match(new RegExp(`the folder ${credDir} .* writable by group or others .*can add a credential; run: chmod go-w ${credDir}`));
  });

  it('refuses a group-writable folder holding the PIN file (the file could be swapped); a sticky one like /tmp is fine', () => {
    fs.chmodSync(dir, 0o770);
    expect(problems().join('\n')).to.include(`run: chmod go-w ${dir}`);
    fs.chmodSync(dir, 0o1777);
    expect(problems()).to.deep.equal([]);
    fs.chmodSync(dir, 0o700);
  });

  it('refuses an operator JWKS that others may write (anyone could add an operator)', () => {
    fs.chmodSync(jwks, 0o666);
    expect(problems().join('\n')).to.include(`the operator JWKS (control.admin.jwksFile) ${jwks} is writable by group or others (mode 0666)`);
  });

  it('quotes a path with spaces in the chmod it suggests', () => {
    const spaced = path.join(dir, 'my pin');
    fs.writeFileSync(spaced, '1234', { mode: 0o644 });
    expect(() => readSecret({ file: spaced })).to.throw(`run: chmod 600 '${spaced}'`);
  });

  it('each reader refuses on its own: readSecret, loadSigningKey, readPrivateJwk', async () => {
    fs.chmodSync(pinFile, 0o644);
    expect(() => readSecret({ file: pinFile })).to.throw(/chmod 600/);
    fs.chmodSync(auditKey, 0o640);
    expect(() => loadSigningKey(auditKey)).to.throw(/the audit signing key .* chmod 600/);
    const { privateFile } = writeOperatorKey(path.join(dir, 'ops'), await generateOperatorKey('alice'));
    expect(readPrivateJwk(privateFile).kid).to.equal('alice');
    fs.chmodSync(privateFile, 0o644);
    expect(() => readPrivateJwk(privateFile)).to.throw(/the operator private key .* chmod 600/);
  });
});

describe('hsm.moduleEnv values are never printed', () => {
  it('the token-not-found message names the variables, not their values', () => {
    const msg = noTokenMessage({ module: '/m.so', moduleEnv: { VENDOR_PASSWORD: 'canary-s3cr3t', SOFTHSM2_CONF: '/etc/canary-conf' }, tokenLabel: 't' }, { slot: undefined, info: undefined, labels: ['other'], matches: 0 } as never);
    expect(msg).to.include('VENDOR_PASSWORD');
    expect(msg).to.include('SOFTHSM2_CONF');
    expect(msg).not.to.include('canary');
  });
});
