/**
 * A minimal XKS client for the conformance checker: signs with our SigV4 signer, keeps one HTTPS
 * keep-alive connection (as KMS would reuse one), and times each call and the TLS handshake.
 */
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { signRequest } from '../auth/sigv4';
import { collectResponse } from '../util/http-response';

export interface ClientOptions {
  /** e.g. https://xks.example.com/prefix/kms/xks/v1 */
  baseUrl: string;
  accessKeyId: string;
  secret: string;
  region: string;
  ca?: Buffer | undefined;
  insecure?: boolean;
  /** Client certificate for proxies that require mTLS. */
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
}

export interface CallResult {
  status: number;
  text: string;
  json: any;
  ms: number;
}

export interface HandshakeResult {
  ms: number;
  protocol: string | null;
  cipher: string;
}

export class XksClient {
  private readonly base: URL;
  private readonly agent: https.Agent;

  constructor(private readonly o: ClientOptions) {
    this.base = new URL(o.baseUrl.replace(/\/+$/, ''));
    if (this.base.protocol !== 'https:') throw new Error('the proxy URL must be https://');
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 1, ...this.tls() });
  }

  private tls(): https.AgentOptions {
    return { ...(this.o.ca ? { ca: this.o.ca } : {}), rejectUnauthorized: !this.o.insecure, ...(this.o.cert ? { cert: this.o.cert } : {}), ...(this.o.key ? { key: this.o.key } : {}) };
  }

  get basePath(): string {
    return this.base.pathname;
  }

  /** A fresh connection: how long TCP + TLS take, and what was negotiated. */
  handshake(): Promise<HandshakeResult> {
    return new Promise((resolve, reject) => {
      const start = performance.now();
      const req = https.request({ host: this.base.hostname, port: this.base.port || 443, method: 'GET', path: '/', agent: false, ...this.tls() });
      req.on('socket', (s) => {
        const sock = s as TLSSocket;
        sock.once('secureConnect', () => {
          const out = { ms: performance.now() - start, protocol: sock.getProtocol(), cipher: sock.getCipher().standardName };
          req.destroy();
          resolve(out);
        });
      });
      req.on('error', (e) => ((e as NodeJS.ErrnoException).code === 'ECONNRESET' ? undefined : reject(e)));
      req.end();
    });
  }

  /** A signed call; `over` lets negative cases change the date, secret, method or body after signing. */
  call(subpath: string, body: unknown, over: { date?: Date; secret?: string; method?: string; sendBody?: string; unsigned?: boolean } = {}): Promise<CallResult> {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const path = this.base.pathname + subpath;
    const method = over.method ?? 'POST';
    const headers = over.unsigned
      ? { 'content-type': 'application/json' }
      : signRequest({
          method,
          url: path,
          host: this.base.host,
          body: Buffer.from(text),
          accessKeyId: this.o.accessKeyId,
          secret: over.secret ?? this.o.secret,
          region: this.o.region,
          ...(over.date ? { date: over.date } : {}),
          headers: { 'content-type': 'application/json' },
        });
    const sendBody = over.sendBody ?? (method === 'GET' ? '' : text);
    return new Promise((resolve, reject) => {
      const start = performance.now();
      const req = https.request({ host: this.base.hostname, port: this.base.port || 443, method, path, agent: this.agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(sendBody)) } }, (res) => {
        collectResponse(res).then((r) => resolve({ status: r.status, text: r.text, json: r.json, ms: performance.now() - start }), reject);
      });
      req.on('error', reject);
      req.end(sendBody);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
