/**
 * `xks-proxy keys rotate|versions|retire` through the CLI entry point, on a real SoftHSM2 token.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { main } from '../../../src/cli/index';
import { createKey } from '../../../src/hsm/key-admin';
import { listKeyVersions } from '../../../src/hsm/key-version-admin';
import { captureOutput } from '../../helpers/capture-output';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

describe('CLI: keys rotate, versions, retire', function () {
  let token: TestToken;
  let configFile: string;

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'hsm-label-1', usage: 'encrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'kept', usage: 'encrypt-decrypt', bits: 128 });
    configFile = path.join(token.dir, 'config.json');
    fs.writeFileSync(
      configFile,
      JSON.stringify({
        server: { plainHttp: true },
        hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
        keyStores: [{ name: 'ks', pathPrefix: '/ks', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'ext-1', label: 'hsm-label-1' }] }],
      }),
    );
  });

  after(() => token?.cleanup());

  const run = (...args: string[]) => captureOutput(() => main(['keys', ...args, '--config', configFile]));

  it('rotate by key store and key id generates the next version with the same usage', async () => {
    const first = await run('rotate', '--key-store', 'ks', '--key-id', 'ext-1');
    expect(first.code, first.err).to.equal(0);
    expect(first.out).to.match(/created version 1 of key "hsm-label-1"/);
    expect((await run('rotate', '--label', 'hsm-label-1')).out).to.match(/created version 2/);
    const list = await captureOutput(() => main(['keys', 'list', '--json', '--config', configFile]));
    const v2 = JSON.parse(list.out).find((k: { label: string }) => k.label.startsWith('hsm-label-1#v2@'));
    expect(v2).to.include({ keySpec: 'AES_256' });
    expect(v2.keyUsage).to.deep.equal(['ENCRYPT']); // as the original: encrypt only
  });

  it('versions lists every version, the newest current', async () => {
    const r = await run('versions', '--key-store', 'ks', '--key-id', 'ext-1');
    expect(r.code, r.err).to.equal(0);
    const rows = r.out.trim().split('\n').slice(1, 4).map((l) => l.trim().split(/\s+/).slice(0, 2));
    expect(rows).to.deep.equal([['0', 'decrypt-only'], ['1', 'decrypt-only'], ['2', 'current']]);
    expect(r.out).to.match(/keyVersions\.usageDir is not set/);
  });

  it('retire needs a reason, and the admin API: without one it warns, fails and destroys nothing', async () => {
    expect((await run('retire', '--key-store', 'ks', '--key-id', 'ext-1', '--version', '1')).err).to.match(/--reason is required/);
    const r = await run('retire', '--key-store', 'ks', '--key-id', 'ext-1', '--version', '1', '--reason', 'no admin API');
    expect(r.code).to.equal(1);
    expect(r.err).to.match(/undecryptable for ever/);
    expect(r.err).to.match(/admin-url is required \(no control.admin in the config\)/);
    expect((await listKeyVersions(token.hsmConfig, token.pin, 'hsm-label-1')).map((v) => v.version)).to.deep.equal([1, 2]);
  });

  it('refuses to rotate a key that is not AES-256, an unknown key, and ambiguous arguments', async () => {
    const weak = await run('rotate', '--label', 'kept');
    expect(weak.code).to.equal(1);
    expect(weak.err).to.match(/AES_128, not AES_256/);
    expect((await run('rotate', '--label', 'nothing-here')).err).to.match(/missing in the token/);
    expect((await run('rotate', '--key-store', 'ks', '--key-id', 'nope')).err).to.match(/no key "nope"/);
    expect((await run('rotate', '--label', 'x', '--key-store', 'ks')).err).to.match(/either --label or --key-store/);
  });
});
