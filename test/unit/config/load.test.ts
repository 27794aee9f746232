import { expect } from 'chai';
import { autoWorkers } from '../../../src/config/cpu-count';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, parseConfig } from '../../../src/config/load';

const minimal = () => ({
  server: { tls: { certFile: 'tls/cert.pem', keyFile: 'tls/key.pem' } },
  hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'XKS_HSM_PIN' }, moduleEnv: { SOFTHSM2_CONF: './softhsm2.conf' } },
  keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: 'creds/a', keys: [{ externalKeyId: 'k1' }] }],
});

function problems(raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, '/etc/xks/config.yaml', env);
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return (e as ConfigError).problems;
  }
  return [];
}

describe('configuration', () => {
  it('applies defaults, resolves relative paths against the file, and freezes', () => {
    const { config } = parseConfig(minimal(), '/etc/xks/config.yaml', {});
    expect(config.server.port).to.equal(8443);
    expect(config.server.plainHttp).to.equal(false);
    expect(config.hsm.pool).to.deep.equal({ size: 4, acquireTimeoutMs: 100 });
    expect(config.limits).to.deep.equal({ maxPlaintextBytes: 4300, maxAadBytes: 8192 });
    expect(config.server.tls!.certFile).to.equal('/etc/xks/tls/cert.pem');
    expect(config.hsm.moduleEnv.SOFTHSM2_CONF).to.equal('/etc/xks/softhsm2.conf');
    expect(config.keyStores[0]!.credentialsDir).to.equal('/etc/xks/creds/a');
    expect(config.keyStores[0]!.keys[0]).to.deep.equal({ externalKeyId: 'k1', enabled: true });
    expect(Object.isFrozen(config.server)).to.equal(true);
    expect(() => ((config.server as { port: number }).port = 1)).to.throw(TypeError);
  });

  it('lists every problem with its path, not just the first', () => {
    const raw = minimal() as Record<string, any>;
    raw.server.port = 'x';
    raw.hsm.pin = { env: 'A', file: 'b' };
    raw.keyStores.push({ name: 'a', pathPrefix: '/a', keys: [{ externalKeyId: 'bad id!' }] });
    raw.bogus = 1;
    const p = problems(raw);
    const joined = p.join('\n');
    expect(joined).to.match(/^server\.port: /m);
    expect(joined).to.match(/^hsm\.pin: give exactly one of "env" or "file"/m);
    expect(joined).to.match(/^keyStores\.1\.keys\.0\.externalKeyId: /m);
    expect(joined).to.match(/Unrecognized key.*bogus/);
    expect(p.length).to.be.greaterThanOrEqual(4);
  });

  it('refuses duplicate prefixes, names and access key ids, and a store without credentials', () => {
    const raw = minimal() as Record<string, any>;
    raw.keyStores = [
      { name: 'a', pathPrefix: '', credentials: [{ accessKeyId: 'AAAAAAAAAAAAAAAAAAAA', secret: { env: 'S1' } }] },
      { name: 'a', pathPrefix: '', credentials: [{ accessKeyId: 'AAAAAAAAAAAAAAAAAAAA', secret: { env: 'S2' } }] },
      { name: 'c', pathPrefix: '/c' },
    ];
    const joined = problems(raw).join('\n');
    expect(joined).to.include('keyStores.1.name: duplicate key store name');
    expect(joined).to.include('keyStores.1.pathPrefix: same prefix as keyStores.0');
    expect(joined).to.include('keyStores.1.credentials.0.accessKeyId: already used by key store "a"');
    expect(joined).to.include('keyStores.2: needs "credentials", "credentialsDir" or "fleetCredentials"');
  });

  it('enforces the spec formats: prefix characters and length, access key id alphabet', () => {
    const raw = minimal() as Record<string, any>;
    raw.keyStores[0].pathPrefix = '/has space';
    raw.keyStores.push({ name: 'b', pathPrefix: '/' + 'x'.repeat(120), credentials: [{ accessKeyId: 'lowercase-not-allowed', secret: { env: 'S' } }] });
    const joined = problems(raw).join('\n');
    expect(joined).to.match(/keyStores\.0\.pathPrefix: must be empty or/);
    expect(joined).to.match(/keyStores\.1\.pathPrefix: with \/kms\/xks\/v1 appended/);
    expect(joined).to.match(/keyStores\.1\.credentials\.0\.accessKeyId: must be 20-30 characters of A-Z and 2-7/);
  });

  it('requires TLS unless plain HTTP is asked for explicitly', () => {
    const raw = minimal() as Record<string, any>;
    delete raw.server.tls;
    expect(problems(raw).join('\n')).to.include('server.tls: required unless server.plainHttp is true');
    raw.server.plainHttp = true;
    expect(problems(raw)).to.deep.equal([]);
  });

  it('takes environment overrides XKS__SECTION__KEY, parsed as JSON when possible', () => {
    const { config } = parseConfig(minimal(), '/etc/xks/config.yaml', {
      XKS__SERVER__PORT: '9443',
      XKS__HSM__POOL__SIZE: '8',
      XKS__KEYSTORES__0__PATHPREFIX: '/tenant-a',
      XKS__LOG__REQUESTLOGSTDOUT: 'false',
    });
    expect(config.server.port).to.equal(9443);
    expect(config.hsm.pool.size).to.equal(8);
    expect(config.keyStores[0]!.pathPrefix).to.equal('/tenant-a');
    expect(config.log.requestLogStdout).to.equal(false);
  });

  it('knows every key of the schema for overrides of settings the file does not have, at any depth', () => {
    // None of these is in minimal(): their camelCase comes from the schema itself.
    const { config } = parseConfig(minimal(), '/etc/xks/config.yaml', {
      XKS__SERVER__PREAUTH__MAXPENDINGPERPEER: '7',
      XKS__SERVER__OVERLOAD__MAXEVENTLOOPLAGMS: '75',
      XKS__KEYSTORES__0__COMPATIBILITY: 'aws-sample',
      XKS__HSM__POOL__ACQUIRETIMEOUTMS: '150',
    });
    expect(config.server.preAuth.maxPendingPerPeer).to.equal(7);
    expect(config.server.overload.maxEventLoopLagMs).to.equal(75);
    expect(config.keyStores[0]!.compatibility).to.equal('aws-sample');
    expect(config.hsm.pool.acquireTimeoutMs).to.equal(150);
  });

  it("server.workers 'auto' (the default) is one per core, in fleet mode (control.store etcd) too", () => {
    const plain = parseConfig(minimal(), '/etc/xks/config.yaml', {}).config;
    expect(plain.server.workers).to.equal(autoWorkers());
    const fleet = parseConfig({ ...minimal(), control: { stateDir: 'state', store: 'etcd', etcd: { endpoints: ['http://127.0.0.1:2379'], prefix: '/xks/test/' } } }, '/etc/xks/config.yaml', {}).config;
    expect(fleet.server.workers).to.equal(autoWorkers());
    const explicit = parseConfig({ ...minimal(), server: { ...minimal().server, workers: 3 } }, '/etc/xks/config.yaml', {}).config;
    expect(explicit.server.workers).to.equal(3);
  });

  it('validates environment overrides like the file', () => {
    expect(problems(minimal(), { XKS__SERVER__PORT: '70000' }).join('\n')).to.match(/^server\.port: /m);
  });

  it('loads YAML and JSON files, and reports unreadable or unparsable files', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-cfg-'));
    try {
      fs.writeFileSync(path.join(dir, 'c.json'), JSON.stringify(minimal()));
      expect(loadConfig(path.join(dir, 'c.json'), {}).config.keyStores[0]!.name).to.equal('a');
      fs.writeFileSync(path.join(dir, 'c.yaml'), 'server:\n  port: [\n');
      expect(() => loadConfig(path.join(dir, 'c.yaml'), {})).to.throw(ConfigError, /cannot parse/);
      expect(() => loadConfig(path.join(dir, 'missing.yaml'), {})).to.throw(ConfigError, /cannot read the file \(ENOENT\)/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("hsm.ivMode: 'proxy' by default, the two HSM-generated modes accepted, anything else refused", () => {
    expect(parseConfig(minimal(), '/etc/xks/config.yaml', {}).config.hsm.ivMode).to.equal('proxy');
    for (const ivMode of ['proxy', 'hsm-params', 'hsm-appended']) {
      const raw = minimal();
      expect(parseConfig({ ...raw, hsm: { ...raw.hsm, ivMode } }, '/etc/xks/config.yaml', {}).config.hsm.ivMode).to.equal(ivMode);
    }
    const raw = minimal();
    expect(problems({ ...raw, hsm: { ...raw.hsm, ivMode: 'hsm' } }).join('\n')).to.match(/hsm\.ivMode/);
  });

  it('the vendor example configs validate, each with the IV mode its HSM needs and async calls (network HSMs)', () => {
    const expected: Record<string, string> = { 'cloudhsm.example.yaml': 'hsm-params', 'luna.example.yaml': 'proxy', 'nshield.example.yaml': 'proxy' };
    for (const [file, ivMode] of Object.entries(expected)) {
      const { config } = loadConfig(path.resolve(__dirname, '../../../../config', file), {});
      expect(config.hsm.ivMode, file).to.equal(ivMode);
      expect(config.hsm.callMode, file).to.equal('async');
    }
  });

  it("hsm.callMode: 'sync' by default, 'async' accepted (also from XKS__HSM__CALLMODE), anything else refused", () => {
    expect(parseConfig(minimal(), '/etc/xks/config.yaml', {}).config.hsm.callMode).to.equal('sync');
    expect(parseConfig(minimal(), '/etc/xks/config.yaml', { XKS__HSM__CALLMODE: 'async' }).config.hsm.callMode).to.equal('async');
    const raw = minimal();
    expect(problems({ ...raw, hsm: { ...raw.hsm, callMode: 'threads' } }).join('\n')).to.match(/hsm\.callMode/);
  });

  it('the shipped SoftHSM2 default config validates', () => {
    const { config } = loadConfig(path.resolve(__dirname, '../../../../config/softhsm.yaml'), {});
    expect(config.keyStores.map((k) => k.name)).to.include('demo');
    expect(config.hsm.pin.file).to.match(/data\/secrets\/hsm-pin$/);
  });
});
