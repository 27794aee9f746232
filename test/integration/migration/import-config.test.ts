/**
 * `xks-proxy import-config` on a realistic settings file of the AWS sample proxy (written for this
 * test from the sample's documented settings: server, tracing, security, tls, two external key
 * stores, pkcs11, limits, hsm_capabilities). The generated configuration then runs a real proxy on
 * a real SoftHSM2 token, and KMS's existing credential keeps working for both key stores.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import winston from 'winston';
import { main as cli } from '../../../src/cli/index';
import { generateAccessKeyId, generateSecret } from '../../../src/auth/credentials';
import { loadConfig } from '../../../src/config/load';
import { createKey } from '../../../src/hsm/key-admin';
import { startProxy, type RunningProxy } from '../../../src/main';
import https from 'node:https';
import { makeTlsCert, xksCall, type Harness } from '../../helpers/proxy-harness';
import { captureOutput } from '../../helpers/capture-output';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

describe('import-config: from the AWS sample proxy settings to a running proxy', function () {
  let token: TestToken;
  let dir: string;
  let settings: string;
  let outDir: string;
  let proxy: RunningProxy | undefined;
  const credRoot = { accessKeyId: generateAccessKeyId(), secret: generateSecret() };
  const credPrefixed = { accessKeyId: generateAccessKeyId(), secret: generateSecret() };

  before(async function () {
    token = createTestToken();
    for (const label of ['xks-health', 'foo', 'cat', 'bar']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt', bits: 256 });
    dir = path.join(token.dir, 'sample');
    fs.mkdirSync(path.join(dir, 'tls'), { recursive: true });
    const { certFile, keyFile } = makeTlsCert(path.join(dir, 'tls'));
    fs.renameSync(certFile, path.join(dir, 'tls', 'server_cert.pem'));
    fs.renameSync(keyFile, path.join(dir, 'tls', 'server_key.pem'));
    settings = path.join(dir, 'settings.toml');
    fs.writeFileSync(
      settings,
      `# A production-like settings file of the sample proxy, on SoftHSM2.
[server]
ip = "127.0.0.1"
port = 0
port_http_ping = 0
region = "eu-west-1"
service = "kms-xks-proxy"
ciphertext_metadata_b64 = "djAuMC4x"

[server.tcp_keepalive]
tcp_keepalive_secs = 60
tcp_keepalive_retries = 3
tcp_keepalive_interval_secs = 1

[tracing]
is_stdout_writer_enabled = true
is_file_writer_enabled = true
level = "INFO"
directory = "/var/local/xks-proxy/logs"
file_prefix = "xks-proxy.log"
rotation_kind = "HOURLY"

[security]
is_sigv4_auth_enabled = true
is_tls_enabled = true
is_mtls_enabled = false
secondary_auth = "Oso"

[security.oso]
polar_file_path = "configuration/oso.polar"

[tls]
tls_cert_pem = "tls/server_cert.pem"
tls_key_pem = "tls/server_key.pem"
mtls_client_ca_pem = "tls/client_ca.pem"
mtls_client_dns_name = "cks.kms.eu-west-1.amazonaws.com"

[[external_key_stores]]
uri_path_prefix = ""
sigv4_access_key_id = "${credRoot.accessKeyId}"
sigv4_secret_access_key = "${credRoot.secret}"
xks_key_id_set = ["foo", "cat"]

[[external_key_stores]]
uri_path_prefix = "/example/uri/path/prefix"
sigv4_access_key_id = "${credPrefixed.accessKeyId}"
sigv4_secret_access_key = "${credPrefixed.secret}"
xks_key_id_set = ["foo", "bar"]

[pkcs11]
session_pool_max_size = 30
session_pool_timeout_milli = 0
session_eager_close = false
user_pin = "${token.pin}"
PKCS11_HSM_MODULE = "${token.module}"
context_read_timeout_milli = 10

[limits]
max_plaintext_in_base64 = 8192
max_aad_in_base64 = 16384

[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
`,
      { mode: 0o600 },
    );
    outDir = path.join(token.dir, 'imported');
  });

  after(async function () {
    await proxy?.close(1000);
    token?.cleanup();
  });

  const run = (...extra: string[]) => captureOutput(() => cli(['import-config', settings, '--token-label', token.tokenLabel, '--module-env', `SOFTHSM2_CONF=${token.confPath}`, '--out-dir', outDir, ...extra]));

  it('writes a valid configuration, the secrets in 0600 files, and reports every setting without printing a secret', async () => {
    const { code, out, err } = await run('--json');
    expect(code, err).to.equal(0);
    for (const secret of [credRoot.secret, credPrefixed.secret, token.pin]) expect(out + err).not.to.include(secret);
    const report = JSON.parse(out) as { problems: string[]; secretFiles: string[]; report: { setting: string; level: string; note: string }[] };
    expect(report.problems).to.deep.equal([]);
    const level = (setting: string) => report.report.find((r) => r.setting.startsWith(setting))?.level;
    expect(level('security.secondary_auth')).to.equal('not-translated');
    expect(level('server.ciphertext_metadata_b64')).to.equal('not-translated');
    expect(level('server.tcp_keepalive')).to.equal('not-translated');
    expect(level('pkcs11.user_pin')).to.equal('changed');
    expect(level('hsm_capabilities')).to.equal('translated');
    // Nothing the file had is dropped without a line.
    expect(report.report.filter((r) => r.note === 'unknown setting')).to.deep.equal([]);
    for (const f of report.secretFiles) expect(fs.statSync(f).mode & 0o777, f).to.equal(0o600);
    const yamlText = fs.readFileSync(path.join(outDir, 'xks-proxy.yaml'), 'utf8');
    for (const secret of [credRoot.secret, credPrefixed.secret, token.pin]) expect(yamlText).not.to.include(secret);
    const cfg = loadConfig(path.join(outDir, 'xks-proxy.yaml')).config;
    expect(cfg.keyStores.map((k) => [k.name, k.pathPrefix, k.keys.map((x) => x.externalKeyId)])).to.deep.equal([
      ['default', '', ['foo', 'cat']],
      ['example-uri-path-prefix', '/example/uri/path/prefix', ['foo', 'bar']],
    ]);
    expect(cfg.keyStores.map((k) => k.compatibility)).to.deep.equal(['aws-sample', 'aws-sample']);
    expect(cfg.hsm.pool.size).to.equal(30);
    expect(cfg.hsm.ivMode).to.equal('proxy');
    expect(cfg.limits).to.deep.equal({ maxPlaintextBytes: 6144, maxAadBytes: 12288 });
  });

  it('the imported configuration serves KMS with the credentials KMS already holds, on both prefixes', async () => {
    const loaded = loadConfig(path.join(outDir, 'xks-proxy.yaml'), { ...process.env, XKS__LOG__REQUESTLOGSTDOUT: 'false' });
    proxy = await startProxy(loaded, { log: winston.createLogger({ silent: true }) });
    const agent = new https.Agent({ ca: fs.readFileSync(path.join(dir, 'tls', 'server_cert.pem')) });
    const h = { proxy, agent, host: `localhost:${proxy.port}` } as unknown as Harness;
    const md = { awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: 'Encrypt', kmsRequestId: 'import-1' };
    const body = { requestMetadata: md, plaintext: Buffer.from('after the migration').toString('base64'), encryptionAlgorithm: 'AES_GCM' };
    expect((await xksCall(h, '/kms/xks/v1/keys/cat/encrypt', body, { cred: credRoot })).status).to.equal(200);
    expect((await xksCall(h, '/example/uri/path/prefix/kms/xks/v1/keys/bar/encrypt', body, { cred: credPrefixed })).status).to.equal(200);
    // Each credential belongs to its own key store, as in the sample.
    expect((await xksCall(h, '/example/uri/path/prefix/kms/xks/v1/keys/bar/encrypt', body, { cred: credRoot })).status).to.equal(401);
    expect((await xksCall(h, '/kms/xks/v1/keys/bar/encrypt', body, { cred: credRoot })).status).to.equal(404);
    agent.destroy();
  });

  it('never overwrites an earlier import', async () => {
    const before = fs.readFileSync(path.join(outDir, 'xks-proxy.yaml'), 'utf8');
    const { code, err } = await run();
    expect(code).to.equal(2);
    expect(err).to.match(/nothing is overwritten/);
    expect(fs.readFileSync(path.join(outDir, 'xks-proxy.yaml'), 'utf8')).to.equal(before);
  });

  it('a settings file that is not TOML is refused without echoing its lines', async () => {
    const bad = path.join(dir, 'broken.toml');
    fs.writeFileSync(bad, `[pkcs11]\nuser_pin = "${token.pin}\n`);
    const { code, err } = await captureOutput(() => cli(['import-config', bad, '--token-label', 'x', '--out-dir', path.join(token.dir, 'never')]));
    expect(code).to.equal(2);
    expect(err).to.match(/not a readable TOML file/);
    expect(err).not.to.include(token.pin);
  });

  it('refuses to run without the token label', async () => {
    const { code, err } = await captureOutput(() => cli(['import-config', settings]));
    expect(code).to.equal(2);
    expect(err).to.match(/--token-label is required/);
  });
});
