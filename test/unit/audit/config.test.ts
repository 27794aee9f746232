import { expect } from 'chai';
import { ConfigError, parseConfig } from '../../../src/config/load';

const base = () => ({
  server: { plainHttp: true },
  hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'PIN' } },
  keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: '/tmp/creds' }],
});

describe('metrics and audit configuration', () => {
  it('defaults: no dedicated metrics port, no key id labels, no /metrics on the admin listener, no audit file, write durability', () => {
    const { config } = parseConfig(base(), '/etc/xks/config.yaml', {});
    expect(config.metrics).to.deep.equal({ host: '127.0.0.1', keyIdLabels: false, adminListener: 'off' });
    expect(config.audit).to.include({ stdout: false, durability: 'write', checkpointIntervalSeconds: 300, maxFileBytes: 100 * 1024 * 1024 });
    expect(config.audit.witnessFile).to.equal(undefined);
    expect(config.audit.file).to.equal(undefined);
  });

  it('resolves audit paths against the config file and takes env overrides', () => {
    const { config } = parseConfig({ ...base(), audit: { file: '../audit/audit.log', signingKeyFile: 'keys/audit.jwk', witnessFile: '../witness/cp.log' } }, '/etc/xks/config.yaml', {
      XKS__METRICS__PORT: '9464',
      XKS__METRICS__KEYIDLABELS: 'true',
      XKS__AUDIT__CHECKPOINTINTERVALSECONDS: '60',
      XKS__AUDIT__DURABILITY: 'fsync',
    });
    expect(config.audit).to.include({ file: '/etc/audit/audit.log', signingKeyFile: '/etc/xks/keys/audit.jwk', witnessFile: '/etc/witness/cp.log', checkpointIntervalSeconds: 60, durability: 'fsync' });
    expect(config.metrics).to.include({ port: 9464, keyIdLabels: true });
  });

  it('refuses an audit file without a signing key, naming the path', () => {
    let err: unknown;
    try {
      parseConfig({ ...base(), audit: { file: 'audit.log' } }, '/etc/xks/config.yaml', {});
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as ConfigError).problems.join('\n')).to.match(/audit\.signingKeyFile: .*required/);
  });
});
