/** The server's slow-client settings: defaults, environment overrides, and the checks between them. */
import { expect } from 'chai';
import { ConfigError, parseConfig } from '../../../src/config/load';

const minimal = (server: Record<string, unknown> = {}) => ({
  server: { tls: { certFile: 'tls/cert.pem', keyFile: 'tls/key.pem' }, ...server },
  hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'XKS_HSM_PIN' } },
  keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: 'creds/a' }],
});

function problems(raw: unknown): string {
  try {
    parseConfig(raw, '/etc/xks/config.yaml', {});
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return (e as ConfigError).problems.join('\n');
  }
  return '';
}

describe('configuration: slow and unauthenticated clients', () => {
  it('defaults suited to KMS: 2 s for headers, 5 s per request, 1 s for the body, 256 pending (32 per peer)', () => {
    const s = parseConfig(minimal(), '/etc/xks/config.yaml', {}).config.server;
    expect([s.headersTimeoutMs, s.requestTimeoutMs, s.bodyTimeoutMs]).to.deep.equal([2000, 5000, 1000]);
    expect(s.preAuth).to.deep.equal({ maxPending: 256, maxPendingPerPeer: 32 });
  });

  it('takes environment overrides of the new keys', () => {
    const s = parseConfig(minimal(), '/etc/xks/config.yaml', { XKS__SERVER__PREAUTH__MAXPENDINGPERPEER: '8', XKS__SERVER__BODYTIMEOUTMS: '500' }).config.server;
    expect(s.preAuth.maxPendingPerPeer).to.equal(8);
    expect(s.bodyTimeoutMs).to.equal(500);
  });

  it('refuses a body or header deadline beyond the request timeout, and nonsense bounds', () => {
    expect(problems(minimal({ bodyTimeoutMs: 6000 }))).to.match(/server\.bodyTimeoutMs: must not exceed server\.requestTimeoutMs/);
    expect(problems(minimal({ headersTimeoutMs: 6000 }))).to.match(/server\.headersTimeoutMs: must not exceed server\.requestTimeoutMs/);
    expect(problems(minimal({ preAuth: { maxPending: 0 } }))).to.match(/server\.preAuth\.maxPending/);
    expect(problems(minimal({ preAuth: { maxPendingPerPeer: 8, extra: 1 } }))).to.match(/server\.preAuth/);
  });
});
