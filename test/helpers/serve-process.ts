/**
 * The proxy as a real process (`xks-proxy serve`), with the audit log on, for crash tests: start
 * it, fire signed Encrypts at it from many connections, `kill -9` it while they run, and compare
 * what the clients were answered with what reached the audit files.
 *
 * Used by test/integration/audit-crash.test.ts and by bench/audit-kill9.ts (which can point at
 * another build's CLI to measure before/after).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { generateSigningKeyPair } from '../../src/audit/signing';
import { createKey } from '../../src/hsm/key-admin';
import { makeTlsCert, writeCredential, type Credential } from './proxy-harness';
import { signedHeaders } from './signer';
import { createTestToken, type TestToken } from './softhsm-token';

export const DEFAULT_CLI = path.resolve(__dirname, '../../src/cli/index.js');

export interface ServeFixture {
  dir: string;
  configFile: string;
  auditDir: string;
  publicKeyFile: string;
  cred: Credential;
  ca: Buffer;
  env: NodeJS.ProcessEnv;
}

/**
 * What a `serve` child process needs besides its config: a fresh token with the AES keys `labels`
 * (xks-health among them, for the deep check), a TLS pair (and its certificate as the client's CA)
 * and a SigV4 credential in token.dir/creds.
 */
export async function childProxyMaterial(labels: readonly string[]): Promise<{ token: TestToken; tls: { certFile: string; keyFile: string }; ca: Buffer; cred: Credential }> {
  const token = createTestToken();
  for (const label of labels) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
  const tls = makeTlsCert(token.dir);
  return { token, tls, ca: fs.readFileSync(tls.certFile), cred: writeCredential(path.join(token.dir, 'creds')) };
}

/** A config for `serve` on the token: key store "demo" with key "k1", audit log in dir/audit. */
export async function serveFixture(token: TestToken, dir: string, audit: Record<string, unknown> = {}): Promise<ServeFixture> {
  await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
  await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { certFile, keyFile } = makeTlsCert(dir);
  const cred = writeCredential(path.join(dir, 'creds'));
  const privateKey = path.join(dir, 'keys', 'audit-signing.jwk');
  const publicKeyFile = path.join(dir, 'keys', 'audit-signing.pub.jwk');
  await generateSigningKeyPair(privateKey, publicKeyFile);
  const auditDir = path.join(dir, 'audit');
  const config = {
    // One process: the crash tests read one audit chain (with workers, each writes under worker-N/).
    server: { host: '127.0.0.1', port: 0, workers: 1, tls: { certFile, keyFile } },
    hsm: { module: token.module, moduleEnv: { SOFTHSM2_CONF: token.confPath }, tokenLabel: token.tokenLabel, pin: { file: token.pinFile } },
    keyStores: [{ name: 'demo', pathPrefix: '/demo', credentialsDir: path.join(dir, 'creds'), keys: [{ externalKeyId: 'k1' }] }],
    log: { level: 'info', requestLogStdout: false },
    audit: { file: path.join(auditDir, 'audit.log'), signingKeyFile: privateKey, ...audit },
  };
  const configFile = path.join(dir, 'xks.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  return { dir, configFile, auditDir, publicKeyFile, cred, ca: fs.readFileSync(certFile), env: { ...process.env } };
}

export interface SpawnedServe {
  child: ChildProcess;
  port: number;
  /** The fields of the listening line (port, adminPort, metricsPort, ...). */
  listening: Record<string, unknown>;
  /** Everything the process wrote to stderr so far (its JSON log). */
  stderr(): string;
  exited: Promise<void>;
}

export interface SpawnOptions {
  /** server.workers > 1: wait for the primary's line, which comes once every worker listens. */
  cluster?: boolean;
  env?: NodeJS.ProcessEnv;
  /** Another build's CLI (bench/audit-kill9.ts measures before/after). */
  cli?: string;
  nodeArgs?: string[];
  /** Give up (and kill it) when it has not listened by then (benchmarks; tests have mocha's timeout). */
  timeoutMs?: number;
}

/**
 * `xks-proxy serve --config FILE` as a child process, as in production; resolves once it listens
 * (a single process's "xks proxy listening", a cluster primary's "xks proxy cluster listening"),
 * rejects with its log if it exits first.
 */
export function spawnServe(configFile: string, o: SpawnOptions = {}): Promise<SpawnedServe> {
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), o.cli ?? DEFAULT_CLI, 'serve', '--config', configFile], { env: o.env ?? process.env, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ready = o.cluster ? '"message":"xks proxy cluster listening"' : '"message":"xks proxy listening"';
  let stderr = '';
  let listened = false;
  return new Promise((resolve, reject) => {
    child.stderr!.on('data', (c: Buffer) => {
      stderr += c.toString();
      if (listened) return;
      // A complete line only: the chunk may end inside one.
      const line = stderr.split('\n').find((l) => l.includes(ready) && l.endsWith('}'));
      if (!line) return;
      listened = true;
      const listening = JSON.parse(line) as Record<string, unknown>;
      resolve({ child, port: Number(listening.port), listening, stderr: () => stderr, exited });
    });
    child.once('exit', (code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
    if (o.timeoutMs !== undefined) {
      setTimeout(() => {
        if (listened) return;
        // A proxy left running would keep the caller alive (its stderr pipe) after the error.
        child.kill('SIGKILL');
        reject(new Error(`serve did not report listening within ${o.timeoutMs} ms: ${stderr.slice(-2000)}`));
      }, o.timeoutMs).unref();
    }
  });
}

export interface ServeProcess {
  child: ChildProcess;
  port: number;
  exited: Promise<void>;
}

/** `serve` of a fixture as a child process; resolves once it logs that it listens. */
export async function startServe(fx: ServeFixture, cli = DEFAULT_CLI): Promise<ServeProcess> {
  const p = await spawnServe(fx.configFile, { env: fx.env, cli });
  return { child: p.child, port: p.port, exited: p.exited };
}

export interface StormResult {
  /** kmsRequestIds of the requests answered 200. */
  answered: string[];
  /** Requests that got no complete answer (connection cut by the kill). */
  cut: number;
  /** Answers other than 200 before the kill (e.g. 429 under overload), by status. */
  otherStatus: Record<number, number>;
}

/**
 * `concurrency` connections each send signed Encrypts back to back; once `killAfter` requests
 * were answered 200, the process gets SIGKILL. Resolves when the process is gone and every
 * request has settled.
 */
/** One signed Encrypt of key k1; status 0 when the connection broke. */
export async function signedEncrypt(fx: ServeFixture, port: number, agent?: https.Agent): Promise<{ status: number; id: string }> {
  const id = crypto.randomUUID();
  const urlPath = '/demo/kms/xks/v1/keys/k1/encrypt';
  const body = JSON.stringify({
    requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/k1', kmsOperation: 'Encrypt', kmsRequestId: id },
    plaintext: 'SGVsbG8gV29ybGQh',
    encryptionAlgorithm: 'AES_GCM',
  });
  const headers = await signedHeaders({ host: `localhost:${port}`, path: urlPath, body, accessKeyId: fx.cred.accessKeyId, secret: fx.cred.secret });
  const status = await new Promise<number>((resolve) => {
    const req = https.request({ host: '127.0.0.1', servername: 'localhost', port, method: 'POST', path: urlPath, headers, ca: fx.ca, ...(agent ? { agent } : {}) }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(0));
    });
    req.on('error', () => resolve(0));
    req.end(body);
  });
  return { status, id };
}

/**
 * `concurrency` connections each send signed Encrypts back to back; once `killAfter` requests
 * were answered 200, the process gets SIGKILL. Resolves when the process is gone and every
 * request has settled.
 */
export async function encryptUntilKilled(fx: ServeFixture, proc: ServeProcess, opts: { concurrency: number; killAfter: number }): Promise<StormResult> {
  const agent = new https.Agent({ keepAlive: true, maxSockets: opts.concurrency, ca: fx.ca });
  const answered: string[] = [];
  let cut = 0;
  let stop = false;
  let killed = false;
  const otherStatus: Record<number, number> = {};
  const loop = async (): Promise<void> => {
    while (!stop) {
      const { status, id } = await signedEncrypt(fx, proc.port, agent);
      if (status === 200) {
        answered.push(id);
        if (answered.length === opts.killAfter) {
          killed = true;
          proc.child.kill('SIGKILL');
        }
      } else if (status === 0 && killed) {
        cut++;
        stop = true;
      } else if (status === 0) {
        stop = true; // the process died by itself
      } else {
        otherStatus[status] = (otherStatus[status] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, loop));
  // Stopped by an answer other than 200 before the kill: kill it now, so that nothing hangs.
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGKILL');
  await proc.exited;
  agent.destroy();
  return { answered, cut, otherStatus };
}

/** Every kmsRequestId recorded in the audit folder (a torn last line is skipped). */
export function auditedRequestIds(auditDir: string): Set<string> {
  const ids = new Set<string>();
  for (const name of fs.readdirSync(auditDir)) {
    if (!name.endsWith('.log')) continue;
    for (const line of fs.readFileSync(path.join(auditDir, name), 'utf8').split('\n')) {
      try {
        const r = JSON.parse(line) as { kmsRequestId?: string };
        if (r.kmsRequestId) ids.add(r.kmsRequestId);
      } catch {
        // torn line
      }
    }
  }
  return ids;
}
