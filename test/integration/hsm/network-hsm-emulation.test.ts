/**
 * The emulated network HSM of the benchmarks (bench/lib/latency-shim.c), and what it shows about
 * the proxy: `xks-proxy serve` runs as in production (a child process) with the emulation as its
 * PKCS#11 module, in front of a real SoftHSM2 token.
 *
 * - The emulation is a faithful wrapper: encrypt and decrypt go through to SoftHSM2 (the round
 *   trip gives the plaintext back) and each C_Encrypt/C_Decrypt is held (counted by the module).
 * - In hsm.callMode async, serve sizes libuv's thread pool from hsm.pool.size before the pool
 *   starts: 8 concurrent Encrypts are all inside the module at once (libuv's default pool has 4
 *   threads, so without the sizing at most 4 are). The module holds each call until 6 are held
 *   at once (or 10 s), so the figure does not depend on the machine's speed.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { expect } from 'chai';
import { latencyShimEnv, latencyShimModule, readShimStats, type ShimOptions } from '../../../bench/lib/latency-shim';
import { formatHsmMetrics, readHsmMetrics } from '../../../src/checker/hsm-metrics';
import type { Credential } from '../../helpers/proxy-harness';
import { childProxyMaterial, spawnServe } from '../../helpers/serve-process';
import { signedHeaders } from '../../helpers/signer';
import { sample } from '../../unit/metrics/exposition';
import type { TestToken } from '../../helpers/softhsm-token';

const KEY = 'net-key';

interface Served {
  port: number;
  metricsPort: number;
  child: ChildProcess;
  stderr: () => string;
}

describe('emulated network HSM (bench/lib/latency-shim.c) in front of the real SoftHSM2 token', function () {
  this.timeout(60_000);
  let token: TestToken;
  let cred: Credential;
  let ca: Buffer;
  let tls: { certFile: string; keyFile: string };
  const children: ChildProcess[] = [];

  before(async () => {
    ({ token, tls, ca, cred } = await childProxyMaterial(['xks-health', KEY]));
  });

  after(async () => {
    for (const c of children) {
      if (c.exitCode === null) {
        const exited = new Promise((resolve) => c.once('exit', resolve));
        c.kill('SIGTERM');
        await exited;
      }
    }
    token.cleanup();
  });

  async function serve(name: string, hsmLines: string[], shim: Omit<ShimOptions, 'realModule'>): Promise<Served> {
    const configFile = path.join(token.dir, `${name}.yaml`);
    const moduleEnv = { SOFTHSM2_CONF: token.confPath, ...latencyShimEnv({ realModule: token.module, ...shim }) };
    fs.writeFileSync(
      configFile,
      [
        `server: { host: 127.0.0.1, port: 0, workers: 1, tls: { certFile: ${JSON.stringify(tls.certFile)}, keyFile: ${JSON.stringify(tls.keyFile)} } }`,
        'hsm:',
        `  module: ${JSON.stringify(latencyShimModule())}`,
        `  moduleEnv: ${JSON.stringify(moduleEnv)}`,
        `  tokenLabel: ${token.tokenLabel}`,
        `  pin: { file: ${JSON.stringify(token.pinFile)} }`,
        ...hsmLines.map((l) => `  ${l}`),
        'health: { intervalMs: 50000 }',
        'keyStores:',
        '  - name: net',
        '    pathPrefix: /net',
        '    credentialsDir: ./creds',
        `    keys: [{ externalKeyId: ${KEY} }]`,
        'log: { level: info, requestLogStdout: false }',
        'metrics: { port: 0 }',
      ].join('\n'),
    );
    const env = { ...process.env };
    delete env.UV_THREADPOOL_SIZE; // what serve does on its own is under test
    const { child, port, listening, stderr } = await spawnServe(configFile, { env });
    children.push(child);
    const metricsPort = Number(listening.metricsPort);
    return { port, metricsPort, child, stderr };
  }

  async function call(port: number, op: 'encrypt' | 'decrypt', body: Record<string, unknown>): Promise<{ status: number; json: Record<string, string> }> {
    const urlPath = `/net/kms/xks/v1/keys/${KEY}/${op}`;
    const text = JSON.stringify({ requestMetadata: { awsPrincipalArn: 'p', kmsKeyArn: 'k', kmsOperation: op === 'encrypt' ? 'Encrypt' : 'Decrypt', kmsRequestId: 'r' }, encryptionAlgorithm: 'AES_GCM', ...body });
    const headers = await signedHeaders({ host: `localhost:${port}`, path: urlPath, body: text, accessKeyId: cred.accessKeyId, secret: cred.secret });
    return new Promise((resolve, reject) => {
      const req = https.request({ host: 'localhost', port, method: 'POST', path: urlPath, headers, ca, agent: false }, (res) => {
        let data = '';
        res.on('data', (c: Buffer) => (data += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode!, json: JSON.parse(data) as Record<string, string> }));
      });
      req.on('error', reject);
      req.end(text);
    });
  }

  it('reports the HSM call time it measured in /metrics: at least the emulated round trip, without the session wait', async () => {
    const { port, metricsPort } = await serve('metrics', ['callMode: async', 'pool: { size: 2 }'], { holdMs: 40 });
    const plaintext = Buffer.from('timed').toString('base64');
    for (let i = 0; i < 3; i++) expect((await call(port, 'encrypt', { plaintext })).status).to.equal(200);
    const text = await new Promise<string>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: metricsPort, path: '/metrics' }, (res) => {
        let data = '';
        res.on('data', (c: Buffer) => (data += c.toString()));
        res.on('end', () => resolve(data));
      }).on('error', reject);
    });
    // The emulation sleeps 40 ms in every call: the measured time cannot be less, whatever the machine.
    expect(sample(text, 'xks_hsm_call_latency_seconds')).to.be.at.least(0.04);
    // 2 concurrent calls of at least 40 ms: at most 50 per second.
    expect(sample(text, 'xks_hsm_capacity_requests_per_second')).to.be.within(1, 50);
    // `xks-proxy check --metrics URL` reads and judges the same.
    const seen = await readHsmMetrics(`http://127.0.0.1:${metricsPort}/metrics`, { insecure: false });
    expect(seen.callLatencyMs).to.be.at.least(40);
    expect(formatHsmMetrics(seen)).to.match(/^HSM call time \(the proxy's own measure, .*\): [\d.]+ ms per C_Encrypt\/C_Decrypt; the HSM link carries about \d+ calls per second, UNDER KMS's 1800 per key store$/);
  });

  it('forwards to SoftHSM2 (the round trip gives the plaintext back) and holds every C_Encrypt and C_Decrypt', async () => {
    const statsFile = path.join(token.dir, 'forward.stats');
    const { port } = await serve('forward', ['callMode: sync'], { holdMs: 1, statsFile });
    const before = readShimStats(statsFile).held; // the start-up deep health check's calls
    const plaintext = Buffer.from('the emulation is a wrapper, not a fake').toString('base64');
    const enc = await call(port, 'encrypt', { plaintext });
    expect(enc.status, JSON.stringify(enc.json)).to.equal(200);
    expect(enc.json.ciphertext).to.not.equal(plaintext);
    const dec = await call(port, 'decrypt', { ciphertext: enc.json.ciphertext, initializationVector: enc.json.initializationVector, authenticationTag: enc.json.authenticationTag, ciphertextMetadata: undefined });
    expect(dec.status, JSON.stringify(dec.json)).to.equal(200);
    expect(dec.json.plaintext).to.equal(plaintext);
    expect(readShimStats(statsFile).held - before).to.equal(2);
  });

  it('serve sizes libuv\'s thread pool from hsm.pool.size in callMode async: 8 concurrent calls reach the HSM at once, not 4', async () => {
    const statsFile = path.join(token.dir, 'pool.stats');
    const armFile = path.join(token.dir, 'pool.arm');
    const { port, stderr } = await serve('pool', ['callMode: async', 'pool: { size: 8 }', 'callTimeoutMs: 30000'], { holdMs: 0, barrier: 6, barrierMs: 10_000, barrierArmFile: armFile, statsFile });
    fs.writeFileSync(armFile, '');
    const plaintext = Buffer.from('concurrency').toString('base64');
    const results = await Promise.all(Array.from({ length: 8 }, () => call(port, 'encrypt', { plaintext })));
    expect(readShimStats(statsFile).max, 'HSM calls held at the same time').to.be.at.least(6);
    expect(results.map((r) => r.status)).to.deep.equal(Array(8).fill(200));
    expect(stderr()).to.include('"UV_THREADPOOL_SIZE":12');
  });
});
