import { expect } from 'chai';
import { parseConfig } from '../../../src/config/load';
import type { Config } from '../../../src/config/schema';
import { restartOnlyChanges } from '../../../src/reload';

const base = (over: Record<string, any> = {}): Config =>
  parseConfig(
    {
      server: { tls: { certFile: 'tls/cert.pem', keyFile: 'tls/key.pem' } },
      hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'XKS_HSM_PIN' } },
      keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: 'creds/a', keys: [{ externalKeyId: 'k1' }] }],
      ...over,
    },
    '/etc/xks/config.yaml',
    {},
  ).config;

describe('reload: what needs a restart', () => {
  it('nothing for what a reload applies: TLS files, key stores, the log level', () => {
    const next = base({
      server: { tls: { certFile: 'tls/new-cert.pem', keyFile: 'tls/new-key.pem' } },
      keyStores: [{ name: 'b', pathPrefix: '/b', credentialsDir: 'creds/b', keys: [] }],
      log: { level: 'debug' },
    });
    expect(restartOnlyChanges(base(), next)).to.deep.equal([]);
  });

  it('names the section of any other change, TLS on/off included', () => {
    expect(restartOnlyChanges(base(), base({ hsm: { module: '/other.so', tokenLabel: 't', pin: { env: 'XKS_HSM_PIN' } } }))).to.deep.equal(['hsm']);
    expect(restartOnlyChanges(base(), base({ server: { plainHttp: true } }))).to.deep.equal(['server']);
    expect(restartOnlyChanges(base(), base({ log: { requestLogStdout: false } }))).to.deep.equal(['log']);
  });

  it('a section no list names (one the schema gains later) still counts', () => {
    const next = { ...base(), futureSection: { on: true } } as unknown as Config;
    expect(restartOnlyChanges(base(), next)).to.deep.equal(['futureSection']);
  });
});
