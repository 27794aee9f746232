/**
 * Starts the real proxy in-process over real HTTPS against a real SoftHSM2 token, and calls it with
 * requests signed by the AWS SDK's signer (test/helpers/signer.ts).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import winston from 'winston';
import { generateAccessKeyId, generateSecret } from '../../src/auth/credentials';
import { parseConfig } from '../../src/config/load';
import type { HsmBackend } from '../../src/hsm/backend';
import { startProxy, type RunningProxy } from '../../src/main';
import { signedHeaders } from './signer';
import { collectResponse } from '../../src/util/http-response';

export interface Credential {
  accessKeyId: string;
  secret: string;
}

export interface Harness {
  proxy: RunningProxy;
  dir: string;
  certFile: string;
  /** The config the proxy was started with, as a file: edit it and call proxy.reload(). */
  configFile: string;
  requestLogFile: string;
  /** Everything the application log wrote. */
  appLog(): string;
  requestLog(): string;
  host: string;
  agent: https.Agent;
  close(): Promise<void>;
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

/** A self-signed EC P-256 certificate for localhost. */
export function makeTlsCert(dir: string): { certFile: string; keyFile: string } {
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  return { certFile, keyFile };
}

export function writeCredential(dir: string, c: Credential = { accessKeyId: generateAccessKeyId(), secret: generateSecret() }): Credential {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(dir, `${c.accessKeyId}.secret`), c.secret + '\n', { mode: 0o600 });
  return c;
}

export async function startHarness(rawConfig: Record<string, any>, opts: { hsm?: HsmBackend; env?: NodeJS.ProcessEnv } = {}): Promise<Harness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-it-'));
  const { certFile, keyFile } = makeTlsCert(dir);
  const requestLogFile = path.join(dir, 'requests.log');
  const raw = {
    ...rawConfig,
    // Lag shedding off unless a test asks for it: on a loaded machine (CI, other jobs) the event
    // loop can run 50 ms late, and a 429 would fail tests that are about something else.
    server: { host: '127.0.0.1', port: 0, overload: { maxEventLoopLagMs: 1000 }, ...(rawConfig.server ?? {}), tls: { certFile, keyFile, ...(rawConfig.server?.tls ?? {}) } },
    log: { level: 'debug', requestLogFile, requestLogStdout: false, ...(rawConfig.log ?? {}) },
  };
  let captured = '';
  const sink = new Writable({
    write(chunk, _enc, cb) {
      captured += chunk.toString();
      cb();
    },
  });
  const log = winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
  // Written out as well (JSON is YAML), so that a test can change it and reload.
  const configFile = path.join(dir, 'config.yaml');
  fs.writeFileSync(configFile, JSON.stringify(raw, null, 2));
  const loaded = parseConfig(raw, configFile, opts.env ?? process.env);
  const proxy = await startProxy(loaded, { log, ...(opts.hsm ? { hsm: opts.hsm } : {}), ...(opts.env ? { env: opts.env } : {}) });
  const agent = new https.Agent({ keepAlive: true, ca: fs.readFileSync(certFile) });
  return {
    proxy,
    dir,
    certFile,
    configFile,
    requestLogFile,
    appLog: () => captured,
    requestLog: () => (fs.existsSync(requestLogFile) ? fs.readFileSync(requestLogFile, 'utf8') : ''),
    host: `localhost:${proxy.port}`,
    agent,
    async close() {
      agent.destroy();
      await proxy.close(1000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function rawRequest(h: Pick<Harness, 'proxy' | 'agent'>, opts: { method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer; port?: number }): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: 'localhost', port: opts.port ?? h.proxy.port, method: opts.method ?? 'POST', path: opts.path, headers: opts.headers ?? {}, agent: h.agent },
      (res) => {
        collectResponse(res).then(resolve, reject);
      },
    );
    req.on('error', reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

export interface CallOptions {
  cred: Credential;
  date?: Date;
  region?: string;
  /** Change the body after signing (tampering). */
  sendBody?: string;
  method?: string;
}

/** A signed XKS call, as KMS would make it. */
export async function xksCall(h: Harness, urlPath: string, body: unknown, o: CallOptions): Promise<HttpResult> {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const headers = await signedHeaders({ host: h.host, path: urlPath, body: text, accessKeyId: o.cred.accessKeyId, secret: o.cred.secret, ...(o.date ? { date: o.date } : {}), ...(o.region ? { region: o.region } : {}), ...(o.method ? { method: o.method } : {}) });
  const sendBody = o.sendBody ?? text;
  return rawRequest(h, { method: o.method ?? 'POST', path: urlPath, headers: { ...headers, 'content-length': String(Buffer.byteLength(sendBody)) }, body: sendBody });
}
