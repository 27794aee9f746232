/**
 * The operator CLI as an operator uses it: keys create/list, credentials new, then `serve` as a
 * child process, one signed request, SIGTERM and a clean exit.
 */
import { expect } from 'chai';
import { autoWorkers } from '../../src/config/cpu-count';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { makeTlsCert } from '../helpers/proxy-harness';
import { spawnServe } from '../helpers/serve-process';
import { signedHeaders } from '../helpers/signer';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const run = promisify(execFile);
const CLI = path.resolve(__dirname, '../../src/cli/index.js');

describe('xks-proxy CLI', () => {
  let token: TestToken;
  let configFile: string;

  before(() => {
    token = createTestToken();
    const { certFile, keyFile } = makeTlsCert(token.dir);
    configFile = path.join(token.dir, 'xks.yaml');
    fs.writeFileSync(
      configFile,
      [
        'server: { host: 127.0.0.1, port: 0, tls: { certFile: ' + JSON.stringify(certFile) + ', keyFile: ' + JSON.stringify(keyFile) + ' } }',
        'hsm:',
        `  module: ${token.module}`,
        `  moduleEnv: { SOFTHSM2_CONF: ${JSON.stringify(token.confPath)} }`,
        `  tokenLabel: ${token.tokenLabel}`,
        '  pin: { env: XKS_CLI_TEST_PIN }',
        'keyStores:',
        '  - name: demo',
        '    pathPrefix: /demo',
        '    credentialsDir: ./creds',
        '    keys: [{ externalKeyId: cli-key }]',
        'log: { requestLogStdout: false }',
      ].join('\n'),
    );
  });
  after(() => token?.cleanup());

  const env = () => ({ ...process.env, XKS_CLI_TEST_PIN: token.pin });
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args, '--config', configFile], { env: env() });

  it('prints help for every command and fails with usage for unknown ones', async () => {
    for (const cmd of [[], ['serve'], ['keys'], ['credentials']]) {
      const { stdout } = await run(process.execPath, [CLI, ...cmd, '--help']);
      expect(stdout).to.match(/Usage/);
    }
    let code = 0;
    try {
      await run(process.execPath, [CLI, 'frobnicate']);
    } catch (e) {
      code = (e as { code: number }).code;
    }
    expect(code).to.equal(2);
  });

  it('reports every config problem and exits 2', async () => {
    const bad = path.join(token.dir, 'bad.yaml');
    fs.writeFileSync(bad, 'server: { port: -1 }\nkeyStores: []\n');
    try {
      await run(process.execPath, [CLI, 'keys', 'list', '--config', bad]);
      expect.fail('should fail');
    } catch (e) {
      const err = e as { code: number; stderr: string };
      expect(err.code).to.equal(2);
      expect(err.stderr).to.match(/server\.port/);
      expect(err.stderr).to.match(/hsm/);
      expect(err.stderr).to.match(/keyStores/);
    }
  });

  it('creates keys, lists them with their metadata, refuses a duplicate label', async () => {
    await cli('keys', 'create', '--label', 'xks-health');
    await cli('keys', 'create', '--label', 'cli-key', '--usage', 'encrypt');
    const { stdout } = await cli('keys', 'list', '--json');
    const rows = JSON.parse(stdout) as { label: string; keySpec: string; keyUsage: string[]; usedBy: unknown[] }[];
    expect(rows.find((r) => r.label === 'cli-key')).to.deep.include({ keySpec: 'AES_256', keyUsage: ['ENCRYPT'] });
    expect(rows.find((r) => r.label === 'cli-key')!.usedBy).to.deep.equal([{ keyStore: 'demo', externalKeyId: 'cli-key', keyStatus: 'ENABLED' }]);
    const table = (await cli('keys', 'list')).stdout.split('\n');
    expect(table[0]).to.match(/^LABEL +KEY SPEC +KEY USAGE +USED BY/);
    expect(table.find((l) => l.startsWith('cli-key '))).to.match(/^cli-key +AES_256 +ENCRYPT +demo\/cli-key ENABLED$/);
    try {
      await cli('keys', 'create', '--label', 'cli-key');
      expect.fail('duplicate label must be refused');
    } catch (e) {
      expect((e as { stderr: string }).stderr).to.match(/exists/);
    }
  });

  it('makes spec-conformant credentials and the KMS proxy configuration, then serves them', async () => {
    const out = path.join(token.dir, 'kms.json');
    await cli('credentials', 'new', '--key-store', 'demo', '--out', out);
    expect(fs.statSync(out).mode & 0o777).to.equal(0o600);
    const kms = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(kms.XksProxyUriPath).to.equal('/demo/kms/xks/v1');
    expect(kms.XksProxyAuthenticationCredential.AccessKeyId).to.match(/^[A-Z2-7]{20,30}$/);
    expect(kms.XksProxyAuthenticationCredential.RawSecretAccessKey).to.match(/^[A-Za-z0-9+/=]{43,64}$/);
    const secretFile = path.join(token.dir, 'creds', `${kms.XksProxyAuthenticationCredential.AccessKeyId}.secret`);
    expect(fs.statSync(secretFile).mode & 0o777).to.equal(0o600);
    const { stdout } = await cli('credentials', 'list');
    expect(stdout.split('\n')[0]).to.match(/^KEY STORE +URI PATH +ACCESS KEY IDS$/);
    expect(stdout).to.include(kms.XksProxyAuthenticationCredential.AccessKeyId);
    expect(stdout).not.to.include(kms.XksProxyAuthenticationCredential.RawSecretAccessKey);

    // server.workers is 'auto' by default: on more than one core the primary reports once every worker is up.
    const { child, port, stderr } = await spawnServe(configFile, { env: env(), cluster: autoWorkers() > 1 });
    const body = JSON.stringify({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: 'Encrypt', kmsRequestId: 'cli' }, plaintext: 'SGVsbG8gV29ybGQh', encryptionAlgorithm: 'AES_GCM' });
    const headers = await signedHeaders({ host: `localhost:${port}`, path: '/demo/kms/xks/v1/keys/cli-key/encrypt', body, accessKeyId: kms.XksProxyAuthenticationCredential.AccessKeyId, secret: kms.XksProxyAuthenticationCredential.RawSecretAccessKey });
    const ca = fs.readFileSync(path.join(token.dir, 'cert.pem'));
    const status = await new Promise<number>((resolve, reject) => {
      const req = https.request({ host: 'localhost', port, method: 'POST', path: '/demo/kms/xks/v1/keys/cli-key/encrypt', headers, ca }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end(body);
    });
    expect(status).to.equal(200);
    const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exit).to.equal(0);
    expect(stderr()).not.to.include(token.pin);
    // Every line the process wrote is a JSON log line, the shutdown one included.
    const lines = stderr().split('\n').filter((l) => l.trim().length > 0).map((l) => JSON.parse(l) as { message: string; level: string; signal?: string });
    expect(lines.find((l) => l.message === 'shutting down')).to.include({ level: 'info', signal: 'SIGTERM' });
  });

  it('credentials remove: deletes a folder credential, never the key store\'s last one', async () => {
    const ids = () => fs.readdirSync(path.join(token.dir, 'creds')).filter((f) => f.endsWith('.secret')).map((f) => f.slice(0, -'.secret'.length));
    await cli('credentials', 'new', '--key-store', 'demo', '--out', path.join(token.dir, 'kms2.json'));
    const before = ids();
    expect(before.length).to.be.greaterThan(1);
    for (const akid of before.slice(1)) {
      const r = await cli('credentials', 'remove', '--key-store', 'demo', '--access-key-id', akid);
      expect(r.stderr).to.include(`removed credential ${akid} of key store "demo"`);
    }
    expect(ids()).to.deep.equal([before[0]]);
    const last = await cli('credentials', 'remove', '--key-store', 'demo', '--access-key-id', before[0]!).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(last?.code).to.equal(1);
    expect(last?.stderr).to.match(/refusing to remove the last credential of key store demo/);
    expect(ids()).to.deep.equal([before[0]]);
  });
});
