/**
 * Sequential per-request latency of Encrypt (the GenerateDataKey shape: 32 bytes of plaintext,
 * ~100 bytes of AAD, CDIV requested) against a running proxy over HTTPS with keep-alive.
 * Prints figures; asserts nothing (speed targets are not tests).
 *
 *   node dist/bench/encrypt-latency.js [--url https://localhost:8443/demo/kms/xks/v1]
 *        [--key demo-key-1] [--kms-config data/kms-proxy-config-demo.json] [--ca data/tls/cert.pem] [-n 2000]
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';
import { signedHeaders } from '../test/helpers/signer';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'https://localhost:8443/demo/kms/xks/v1' },
      key: { type: 'string', default: 'demo-key-1' },
      'kms-config': { type: 'string', default: 'data/kms-proxy-config-demo.json' },
      ca: { type: 'string', default: 'data/tls/cert.pem' },
      n: { type: 'string', short: 'n', default: '2000' },
    },
  });
  const kms = JSON.parse(fs.readFileSync(values['kms-config']!, 'utf8'));
  const cred = { accessKeyId: kms.XksProxyAuthenticationCredential.AccessKeyId, secret: kms.XksProxyAuthenticationCredential.RawSecretAccessKey };
  const url = new URL(`${values.url}/keys/${values.key}/encrypt`);
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fs.readFileSync(values.ca!) });
  const n = Number(values.n);
  const samples: number[] = [];
  let errors = 0;
  for (let i = 0; i < n + 50; i++) {
    const body = JSON.stringify({
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:role/bench', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/bench', kmsOperation: 'GenerateDataKey', kmsRequestId: crypto.randomUUID() },
      plaintext: crypto.randomBytes(32).toString('base64'),
      additionalAuthenticatedData: crypto.randomBytes(100).toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
      ciphertextDataIntegrityValueAlgorithm: 'SHA_256',
    });
    const headers = await signedHeaders({ host: url.host, path: url.pathname, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
    const t0 = process.hrtime.bigint();
    const status = await new Promise<number>((resolve, reject) => {
      const req = https.request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers, agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (status !== 200) errors++;
    if (i >= 50) samples.push(ms); // the first 50 warm up the connection and the JIT
  }
  agent.destroy();
  samples.sort((a, b) => a - b);
  const q = (p: number) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))]!.toFixed(2);
  console.log(JSON.stringify({ requests: n, errors, p50ms: q(0.5), p90ms: q(0.9), p99ms: q(0.99), maxms: samples[samples.length - 1]!.toFixed(2) }));
}

void main();
