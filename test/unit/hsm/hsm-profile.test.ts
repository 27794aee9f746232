import { expect } from 'chai';
import path from 'node:path';
import { loadConfig } from '../../../src/config/load';
import { isNetworkHsm, resolveHsmProfile, tagFailureAsGeneralError } from '../../../src/hsm/hsm-profile';

describe('HSM profile (hsm.profile)', () => {
  it('is recognised from the vendor module file names when unset', () => {
    const cases: [string, string][] = [
      ['/usr/lib/softhsm/libsofthsm2.so', 'softhsm2'],
      ['/opt/homebrew/lib/softhsm/libsofthsm2.dylib', 'softhsm2'],
      ['/usr/safenet/lunaclient/lib/libCryptoki2_64.so', 'luna'],
      ['/opt/cloudhsm/lib/libcloudhsm_pkcs11.so', 'cloudhsm'],
      ['/opt/nfast/toolkits/pkcs11/libcknfast.so', 'nshield'],
      ['/opt/vendor/lib/libsomething-pkcs11.so', 'generic'],
      // a directory called softhsm does not make a module SoftHSM2
      ['/usr/lib/softhsm/libother.so', 'generic'],
    ];
    for (const [module, profile] of cases) expect(resolveHsmProfile({ module }), module).to.equal(profile);
  });

  it('an explicit hsm.profile wins over the module name', () => {
    expect(resolveHsmProfile({ module: '/usr/lib/softhsm/libsofthsm2.so', profile: 'generic' })).to.equal('generic');
    expect(resolveHsmProfile({ module: '/opt/x/libwrapper.so', profile: 'luna' })).to.equal('luna');
  });

  it('only SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR; Luna, CloudHSM and nShield are network HSMs', () => {
    expect(tagFailureAsGeneralError('softhsm2')).to.equal(true);
    for (const p of ['luna', 'cloudhsm', 'nshield', 'generic'] as const) expect(tagFailureAsGeneralError(p), p).to.equal(false);
    for (const p of ['luna', 'cloudhsm', 'nshield'] as const) expect(isNetworkHsm(p), p).to.equal(true);
    for (const p of ['softhsm2', 'generic'] as const) expect(isNetworkHsm(p), p).to.equal(false);
  });

  it('the shipped configs name their profile, and the network HSMs set a call deadline in async mode', () => {
    const expected: Record<string, string> = { 'softhsm.yaml': 'softhsm2', 'luna.example.yaml': 'luna', 'cloudhsm.example.yaml': 'cloudhsm', 'nshield.example.yaml': 'nshield' };
    for (const [file, profile] of Object.entries(expected)) {
      const { config } = loadConfig(path.resolve(__dirname, '../../../../config', file), {});
      expect(config.hsm.profile, file).to.equal(profile);
      expect(resolveHsmProfile(config.hsm), file).to.equal(profile);
      if (isNetworkHsm(profile as 'luna')) expect([config.hsm.callMode, config.hsm.callTimeoutMs], file).to.deep.equal(['async', 150]);
    }
  });
});
