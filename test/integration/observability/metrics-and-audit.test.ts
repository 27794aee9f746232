/**
 * Observability end to end: the real proxy over HTTPS on a real SoftHSM2 token, with the audit log
 * and the dedicated /metrics listener on. Metrics move as requests are made (scrape and assert);
 * one audit record per request for each outcome; a canary plaintext and AAD appear in no log
 * output; the log left at shutdown verifies end to end.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { AuditLog } from '../../../src/audit/audit-log';
import { generateSigningKeyPair, loadVerificationKey } from '../../../src/audit/signing';
import { verifyAuditFiles } from '../../../src/audit/verify';
import { main as cli } from '../../../src/cli/index';
import { createKey } from '../../../src/hsm/key-admin';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';
import { sample } from '../../unit/metrics/exposition';

const P = '/obs/kms/xks/v1';
const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
const md = (op: string, id = crypto.randomUUID()) => ({
  awsPrincipalArn: 'arn:aws:iam::123456789012:role/Observed',
  kmsKeyArn: 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsOperation: op,
  kmsRequestId: id,
  kmsViaService: 'ebs',
  awsSourceVpc: 'vpc-0abc',
  awsSourceVpce: 'vpce-0def',
});

function getText(port: number, urlPath: string): Promise<{ status: number; text: string; type: string | undefined }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text, type: res.headers['content-type'] }));
    }).on('error', reject);
  });
}

describe('observability: metrics and the audit log over HTTPS against SoftHSM2', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  let auditFile: string;
  let publicKey: string;
  let stdout = '';
  const realWrite = process.stdout.write;
  // Canaries: random, so that a match can only come from this test's request.
  const canaryPlain = `CANARY-PLAINTEXT-${crypto.randomBytes(8).toString('hex')}`;
  const canaryAad = `CANARY-AAD-${crypto.randomBytes(8).toString('hex')}`;

  before(async function () {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt', bits: 256 });
    await createKey(token.hsmConfig, token.pin, { label: 'k-both', usage: 'encrypt-decrypt', bits: 256 });
    const credDir = path.join(token.dir, 'creds');
    cred = writeCredential(credDir);
    const priv = path.join(token.dir, 'audit-keys', 'signing.jwk');
    publicKey = path.join(token.dir, 'audit-keys', 'signing.pub.jwk');
    await generateSigningKeyPair(priv, publicKey);
    auditFile = path.join(token.dir, 'audit', 'audit.log');
    // audit.stdout writes to process.stdout: keep the audit lines, let the test reporter through.
    process.stdout.write = function (chunk: any, ...rest: any[]) {
      const s = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
      if (s.startsWith('{"')) {
        stdout += s;
        const cb = rest.find((a) => typeof a === 'function');
        if (cb) cb();
        return true;
      }
      return (realWrite as any).call(process.stdout, chunk, ...rest);
    } as typeof process.stdout.write;
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'obs', pathPrefix: '/obs', credentialsDir: credDir, keys: [{ externalKeyId: 'k-both' }] }],
      metrics: { port: 0 },
      audit: { file: auditFile, signingKeyFile: priv, stdout: true },
    });
  });

  after(async () => {
    process.stdout.write = realWrite;
    await h?.close();
    token?.cleanup();
  });

  const call = (p: string, body: unknown, extra: Partial<Parameters<typeof xksCall>[3]> = {}) => xksCall(h, p, body, { cred, ...extra });
  const scrape = async () => {
    const r = await getText(h.proxy.metricsPort!, '/metrics');
    expect(r.status).to.equal(200);
    expect(r.type).to.match(/^text\/plain/);
    return r.text;
  };
  const audit = () => {
    (h.proxy.audit as AuditLog).flush();
    return fs.readFileSync(auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  };

  it('serves /metrics on the dedicated listener only at /metrics', async () => {
    expect(h.proxy.metricsPort).to.be.a('number');
    // Errors in the operator listeners' one shape: {"error": code, "message": text} (src/http/respond.ts).
    const other = await getText(h.proxy.metricsPort!, '/other');
    expect(other.status).to.equal(404);
    expect(other.type).to.match(/^application\/json/);
    expect(JSON.parse(other.text)).to.deep.equal({ error: 'not-found', message: 'only /metrics is served here' });
    const text = await scrape();
    expect(sample(text, 'xks_build_info')).to.equal(1);
    expect(text).to.include('process_cpu_user_seconds_total');
    expect(text).to.include('nodejs_eventloop_lag_seconds');
  });

  it('moves request counters, latency histograms and HSM timings as requests are made', async () => {
    const before = await scrape();
    const okLabels = { key_store: 'obs', api: 'Encrypt', outcome: 'ok' };
    const n0 = sample(before, 'xks_requests_total', okLabels) ?? 0;
    const h0 = sample(before, 'xks_request_duration_seconds_count', okLabels) ?? 0;
    const e0 = sample(before, 'xks_hsm_operation_duration_seconds_count', { operation: 'encrypt', outcome: 'ok' }) ?? 0;
    for (let i = 0; i < 3; i++) {
      const r = await call(`${P}/keys/k-both/encrypt`, { requestMetadata: md('Encrypt'), plaintext: b64('hello'), encryptionAlgorithm: 'AES_GCM' });
      expect(r.status, r.text).to.equal(200);
    }
    expect((await call(`${P}/keys/nope/metadata`, { requestMetadata: md('DescribeKey') })).status).to.equal(404);
    const after = await scrape();
    expect(sample(after, 'xks_requests_total', okLabels)).to.equal(n0 + 3);
    expect(sample(after, 'xks_request_duration_seconds_count', okLabels)).to.equal(h0 + 3);
    expect(sample(after, 'xks_request_duration_seconds_bucket', { ...okLabels, le: '+Inf' })).to.equal(h0 + 3);
    expect(sample(after, 'xks_requests_total', { key_store: 'obs', api: 'GetKeyMetadata', outcome: 'KeyNotFoundException' })).to.be.at.least(1);
    expect(sample(after, 'xks_hsm_operation_duration_seconds_count', { operation: 'encrypt', outcome: 'ok' })).to.be.at.least(e0 + 3);
    // No request ids, principals or unconfigured key ids in labels.
    expect(after).to.not.include('arn:aws');
    expect(after).to.not.include('nope');
  });

  it('counts SigV4 failures by bounded reason', async () => {
    const before = await scrape();
    const health = { requestMetadata: { kmsRequestId: crypto.randomUUID(), kmsOperation: 'KmsHealthCheck' } };
    await call(`${P}/health`, health, { sendBody: JSON.stringify({ ...health, x: 1 }) });
    await call(`${P}/health`, health, { date: new Date(Date.now() - 10 * 60_000) });
    await call(`${P}/health`, health, { cred: { accessKeyId: 'UNKNOWNUNKNOWNUNKNOWN2', secret: cred.secret } });
    const after = await scrape();
    for (const reason of ['signature_mismatch', 'clock_skew', 'unknown_key_id']) {
      const l = { key_store: 'obs', reason };
      expect(sample(after, 'xks_sigv4_failures_total', l), reason).to.equal((sample(before, 'xks_sigv4_failures_total', l) ?? 0) + 1);
    }
  });

  it('reports pool, deep health, kill switch, certificate expiry and credential age', async () => {
    const text = await scrape();
    expect(sample(text, 'xks_hsm_session_pool', { state: 'max' })).to.equal(4);
    expect(sample(text, 'xks_hsm_session_pool', { state: 'open' })).to.be.within(1, 4);
    expect(sample(text, 'xks_hsm_session_pool', { state: 'in_use' })).to.equal(0);
    expect(sample(text, 'xks_hsm_session_pool', { state: 'waiters' })).to.equal(0);
    expect(sample(text, 'xks_health_status', { status: 'ACTIVE' })).to.equal(1);
    expect(sample(text, 'xks_health_status', { status: 'UNAVAILABLE' })).to.equal(0);
    expect(sample(text, 'xks_kill_switch_engaged', { scope: 'proxy' })).to.equal(0);
    expect(sample(text, 'xks_kill_switch_engaged', { scope: 'key_store', key_store: 'obs' })).to.equal(0);
    // The harness certificate is valid for 2 days.
    expect(sample(text, 'xks_tls_certificate_expiry_days')).to.be.within(1.9, 2.01);
    const age = sample(text, 'xks_sigv4_credential_age_days', { key_store: 'obs', access_key_id: cred.accessKeyId });
    expect(age).to.be.within(0, 0.01);
    expect(sample(text, 'xks_audit_records_total')).to.be.greaterThan(0);
    expect(sample(text, 'xks_audit_write_errors_total')).to.equal(0);
    expect(sample(text, 'xks_overload_shed_ratio')).to.equal(0);
    expect(sample(text, 'xks_requests_in_flight')).to.equal(0);
  });

  it('exposes the seq of the last checkpoint record (for audit verify --expect-seq)', async () => {
    (h.proxy.audit as AuditLog).checkpoint('interval');
    const cp = audit().filter((r) => r.type === 'checkpoint').at(-1)!;
    expect(sample(await scrape(), 'xks_audit_last_checkpoint_seq')).to.equal(cp.seq);
  });

  it('reports the share of requests shed while over capacity', async () => {
    h.proxy.overload.setLagForTest(2000); // half-way between the harness's maximum lag (1000) and three times it
    try {
      expect(sample(await scrape(), 'xks_overload_shed_ratio')).to.equal(0.5);
    } finally {
      h.proxy.overload.setLagForTest(0);
    }
    expect(sample(await scrape(), 'xks_overload_shed_ratio')).to.equal(0);
  });

  it('writes exactly one audit record per request, for each outcome, with the request metadata', async () => {
    const cases: [string, () => Promise<{ status: number }>, number, string | undefined][] = [];
    const id = () => crypto.randomUUID();
    const ids = Array.from({ length: 6 }, id);
    cases.push([ids[0]!, () => call(`${P}/keys/k-both/encrypt`, { requestMetadata: md('Encrypt', ids[0]), plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' }), 200, undefined]);
    cases.push([ids[1]!, () => call(`${P}/keys/k-both/metadata`, { requestMetadata: md('DescribeKey', ids[1]) }, { sendBody: JSON.stringify({ requestMetadata: md('DescribeKey', ids[1]), tampered: true }) }), 401, 'AuthenticationFailedException']);
    cases.push([ids[2]!, () => call(`${P}/keys/missing/metadata`, { requestMetadata: md('DescribeKey', ids[2]) }), 404, 'KeyNotFoundException']);
    cases.push([ids[3]!, () => call(`${P}/keys/k-both/encrypt`, { requestMetadata: md('Encrypt', ids[3]), plaintext: 42, encryptionAlgorithm: 'AES_GCM' }), 400, 'ValidationException']);
    cases.push([ids[4]!, () => call(`${P}/keys/k-both/decrypt`, { requestMetadata: md('Decrypt', ids[4]), ciphertext: b64('0123456789abcdef'), initializationVector: b64(Buffer.alloc(12)), authenticationTag: b64(Buffer.alloc(16)), encryptionAlgorithm: 'AES_GCM' }), 400, 'InvalidCiphertextException']);
    cases.push([ids[5]!, () => call(`${P}/health`, { requestMetadata: { kmsRequestId: ids[5], kmsOperation: 'KmsHealthCheck' } }), 200, undefined]);
    for (const [kmsRequestId, run, status, errorName] of cases) {
      const before = audit().length;
      expect((await run()).status).to.equal(status);
      const added = audit().slice(before);
      expect(added, kmsRequestId).to.have.length(1);
      const r = added[0]!;
      // SigV4 comes before the body is parsed: an unauthenticated request's metadata is not trusted.
      if (status !== 401) expect(r.kmsRequestId).to.equal(kmsRequestId);
      expect(r).to.include({ type: 'xks', keyStore: 'obs', status, outcome: errorName ? 'error' : 'ok' });
      expect(r.errorName).to.equal(errorName);
      expect(r.latencyMs).to.be.a('number');
      if (r.api !== 'GetHealthStatus' && status !== 401) expect(r).to.include({ awsPrincipalArn: md('x').awsPrincipalArn, kmsKeyArn: md('x').kmsKeyArn, kmsViaService: 'ebs', awsSourceVpc: 'vpc-0abc', awsSourceVpce: 'vpce-0def' });
      if (status === 200 && r.api === 'Encrypt') expect(r.hsmMs).to.be.greaterThan(0);
      if (errorName === 'AuthenticationFailedException') expect(r.reason).to.equal('sigv4: signature does not match');
    }
    // A request that never reached a key store is audited too.
    const before = audit().length;
    expect((await call('/nowhere/kms/xks/v1/health', {})).status).to.equal(404);
    const recs = audit().slice(before);
    expect(recs).to.have.length(1);
    expect(recs[0]).to.include({ errorName: 'InvalidUriPathException', api: 'Unknown' });
  });

  it('records admin actions with operator, scope and reason', () => {
    h.proxy.audit.writeAdmin({ operator: 'ops@example.com', action: 'killswitch.engage', scope: 'keyStore:obs', reason: 'drill', outcome: 'ok' });
    const r = audit().at(-1)!;
    expect(r).to.include({ type: 'admin', operator: 'ops@example.com', action: 'killswitch.engage', scope: 'keyStore:obs', reason: 'drill', outcome: 'ok' });
  });

  it('never writes the plaintext, AAD, ciphertext, secret or signature to any log output', async () => {
    const aad = b64(canaryAad);
    const enc = await call(`${P}/keys/k-both/encrypt`, { requestMetadata: md('Encrypt'), plaintext: b64(canaryPlain), additionalAuthenticatedData: aad, encryptionAlgorithm: 'AES_GCM' });
    expect(enc.status, enc.text).to.equal(200);
    const dec = await call(`${P}/keys/k-both/decrypt`, { requestMetadata: md('Decrypt'), ciphertext: enc.json.ciphertext, initializationVector: enc.json.initializationVector, authenticationTag: enc.json.authenticationTag, additionalAuthenticatedData: aad, encryptionAlgorithm: 'AES_GCM' });
    expect(Buffer.from(dec.json.plaintext, 'base64').toString()).to.equal(canaryPlain);
    const outputs: Record<string, string> = {
      auditFile: (audit(), fs.readFileSync(auditFile, 'utf8')),
      auditStdout: stdout,
      appLog: h.appLog(),
      metrics: await scrape(),
    };
    expect(outputs.auditStdout).to.include('"type":"xks"'); // the stdout copy is really captured
    const forbidden = [canaryPlain, b64(canaryPlain), canaryAad, aad, enc.json.ciphertext, enc.json.authenticationTag, cred.secret];
    for (const [where, text] of Object.entries(outputs)) {
      for (const f of forbidden) expect(text.includes(f), `${where} contains ${f.slice(0, 12)}...`).to.equal(false);
      expect(text).to.not.match(/Signature=[0-9a-f]{64}/);
    }
    // The audit log replaced the first request log.
    expect(h.requestLog()).to.equal('');
  });

  it('leaves at shutdown an audit log that verifies end to end, closed by a signed checkpoint', async () => {
    await h.close();
    const last = JSON.parse(fs.readFileSync(auditFile, 'utf8').trim().split('\n').at(-1)!);
    expect(last).to.include({ type: 'checkpoint', reason: 'shutdown' });
    const report = await verifyAuditFiles([path.dirname(auditFile)], await loadVerificationKey(publicKey));
    expect(report.exitCode, JSON.stringify(report.problem)).to.equal(0);
    expect(report.records).to.be.greaterThan(10);
    // The same through the CLI (exit status 0); and a tampered copy fails with 1.
    const quiet = process.stdout.write;
    let out = '';
    process.stdout.write = ((c: any) => ((out += String(c)), true)) as typeof process.stdout.write;
    try {
      expect(await cli(['audit', 'verify', '--public-key', publicKey, auditFile])).to.equal(0);
      const copy = path.join(token.dir, 'tampered.log');
      fs.writeFileSync(copy, fs.readFileSync(auditFile, 'utf8').replace('role/Observed', 'role/Mallory'));
      expect(await cli(['audit', 'verify', '--public-key', publicKey, copy])).to.equal(1);
    } finally {
      process.stdout.write = quiet;
    }
    expect(out).to.match(/OK: the chain is intact/);
    expect(out).to.match(/FAIL: modified: tampered\.log line \d+ \(seq \d+\)/);
  });
});
