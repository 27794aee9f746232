/**
 * The spec's troubleshooting tool (Appendix D): curl --aws-sigv4 is a second, independent SigV4
 * implementation. The proxy must accept what it signs.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, type Credential, type Harness } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const run = promisify(execFile);

describe('curl --aws-sigv4 against the proxy', () => {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;

  before(async () => {
    token = createTestToken({ label: 'xks-curl-it' });
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'curl-key', usage: 'encrypt-decrypt' });
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'demo', pathPrefix: '/demo', credentialsDir: credDir, keys: [{ externalKeyId: 'curl-key' }] }],
    });
  });

  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  async function curl(urlPath: string, body: object, user = `${cred.accessKeyId}:${cred.secret}`): Promise<{ status: number; json: any }> {
    const { stdout } = await run('curl', [
      '-sS', '--aws-sigv4', 'aws:amz:us-east-1:kms-xks-proxy', '--user', user, '--cacert', h.certFile,
      '-H', 'Content-Type: application/json', '-d', JSON.stringify(body), '-w', '\n%{http_code}',
      `https://localhost:${h.proxy.port}${urlPath}`,
    ]);
    const nl = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(nl + 1)), json: JSON.parse(stdout.slice(0, nl)) };
  }

  const rm = (op: string) => ({ awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/x', kmsOperation: op, kmsRequestId: 'curl-' + op });

  it('GetHealthStatus, Encrypt, Decrypt and GetKeyMetadata all verify', async () => {
    const health = await curl('/demo/kms/xks/v1/health', { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: 'curl-h' } });
    expect(health.status).to.equal(200);
    expect(health.json.ekmFleetDetails[0].healthStatus).to.equal('ACTIVE');
    const enc = await curl('/demo/kms/xks/v1/keys/curl-key/encrypt', { requestMetadata: rm('Encrypt'), plaintext: Buffer.from('Hello World!').toString('base64'), encryptionAlgorithm: 'AES_GCM', ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
    expect(enc.status).to.equal(200);
    expect(enc.json.ciphertextDataIntegrityValue).to.be.a('string');
    const dec = await curl('/demo/kms/xks/v1/keys/curl-key/decrypt', { requestMetadata: rm('Decrypt'), encryptionAlgorithm: 'AES_GCM', ciphertext: enc.json.ciphertext, initializationVector: enc.json.initializationVector, authenticationTag: enc.json.authenticationTag });
    expect(dec.status).to.equal(200);
    expect(Buffer.from(dec.json.plaintext, 'base64').toString()).to.equal('Hello World!');
    const meta = await curl('/demo/kms/xks/v1/keys/curl-key/metadata', { requestMetadata: rm('DescribeKey') });
    expect(meta.json).to.deep.equal({ keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'], keyStatus: 'ENABLED' });
  });

  it('a wrong secret is 401 AuthenticationFailedException', async () => {
    const r = await curl('/demo/kms/xks/v1/health', { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: 'curl-bad' } }, `${cred.accessKeyId}:${'A'.repeat(44)}`);
    expect(r.status).to.equal(401);
    expect(r.json.errorName).to.equal('AuthenticationFailedException');
  });
});
