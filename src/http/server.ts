/**
 * Listeners. HTTPS by default: TLS 1.2 and 1.3 only, with the spec's cipher suites first
 * (spec "API content type": TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
 * ECDHE-RSA/ECDSA-AES256-GCM-SHA384), forward-secret suites only; HTTP/1.1 with keep-alive.
 * Plain HTTP only when the operator sets server.plainHttp (a TLS-terminating load balancer).
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { RequestListener } from 'node:http';
import type { Config } from '../config/schema';

export const TLS_CIPHERS = [
  // TLS 1.3
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
  // TLS 1.2, ECDHE only
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
].join(':');

const BAD_REQUEST = JSON.stringify({ errorName: 'ValidationException', errorMessage: 'Malformed HTTP request.' });

export function tlsOptions(tls: NonNullable<Config['server']['tls']>): https.ServerOptions {
  return {
    cert: fs.readFileSync(tls.certFile),
    key: fs.readFileSync(tls.keyFile),
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.3',
    ciphers: TLS_CIPHERS,
    honorCipherOrder: true,
    // mTLS: a client without a certificate chaining to the configured CA (or an expired one) fails
    // the handshake itself.
    ...(tls.clientAuth ? { requestCert: true, rejectUnauthorized: true, ca: fs.readFileSync(tls.clientAuth.caFile) } : {}),
  };
}

/** "cks.kms.*.amazonaws.com" -> a matcher where "*" is exactly one DNS label. */
export function subjectMatcher(patterns: readonly string[]): (cn: string) => boolean {
  const res = patterns.map((p) => new RegExp('^' + p.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\-]/g, '\\$&')).join('[A-Za-z0-9-]+') + '$', 'i'));
  return (cn) => res.some((r) => r.test(cn));
}

/** Called when a client certificate chains to the CA but its subject is not allowed. */
export type RefusedClient = (subjectCn: string, remoteAddress: string | undefined) => void;

export function createMainServer(server: Config['server'], handler: RequestListener, onRefused?: RefusedClient): http.Server {
  const common: http.ServerOptions = {
    headersTimeout: server.headersTimeoutMs,
    requestTimeout: server.requestTimeoutMs,
    keepAliveTimeout: server.keepAliveTimeoutMs,
    maxHeaderSize: 16384,
  };
  const s = server.plainHttp || !server.tls
    ? http.createServer(common, handler)
    : https.createServer({ ...common, ...tlsOptions(server.tls) }, handler);
  hardenClientErrors(s);
  const clientAuth = server.plainHttp ? undefined : server.tls?.clientAuth;
  if (clientAuth) {
    // Spec "Authentication": the proxy MUST refuse a client whose subject is not the configured one.
    // Node cannot veto a verified chain inside the handshake, so the connection is destroyed the
    // moment the handshake completes, before any request on it is read.
    allowedSubjects.set(s, subjectMatcher(clientAuth.allowedSubjects));
    s.on('secureConnection', (socket: import('node:tls').TLSSocket) => {
      const cn = socket.getPeerCertificate()?.subject?.CN;
      const name = Array.isArray(cn) ? cn.join(',') : (cn ?? '');
      if (!socket.authorized || !allowedSubjects.get(s)!(name)) {
        onRefused?.(name, socket.remoteAddress);
        socket.destroy();
      }
    });
  }
  return s;
}

/** The allowed client subjects of each mTLS server, replaceable by a reload. */
const allowedSubjects = new WeakMap<http.Server, (cn: string) => boolean>();

/**
 * Hot reload of the TLS material: new connections get the new certificate, key and client CA;
 * open connections keep theirs. Whether client certificates are requested at all is fixed when
 * the listener starts.
 */
export function reloadTls(s: http.Server, tls: NonNullable<Config['server']['tls']>): void {
  if (!(s instanceof https.Server)) throw new Error('the listener is plain HTTP; TLS cannot be reloaded');
  const o = tlsOptions(tls);
  s.setSecureContext({ cert: o.cert, key: o.key, minVersion: o.minVersion, maxVersion: o.maxVersion, ciphers: o.ciphers, honorCipherOrder: o.honorCipherOrder, ...(o.ca ? { ca: o.ca } : {}) } as import('node:tls').SecureContextOptions);
  if (tls.clientAuth && allowedSubjects.has(s)) allowedSubjects.set(s, subjectMatcher(tls.clientAuth.allowedSubjects));
}

export function createPlainServer(handler: RequestListener): http.Server {
  const s = http.createServer({ headersTimeout: 5000, requestTimeout: 10000 }, handler);
  hardenClientErrors(s);
  return s;
}

/** A malformed request gets a JSON 400 (never an HTML page), and never crashes the process. */
function hardenClientErrors(s: http.Server): void {
  s.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(BAD_REQUEST)}\r\nConnection: close\r\n\r\n${BAD_REQUEST}`);
  });
}

export function listen(s: http.Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, host, () => {
      s.off('error', reject);
      resolve(s.address() as AddressInfo);
    });
  });
}

export function closeServer(s: http.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(() => s.closeAllConnections(), graceMs);
    t.unref();
    s.close(() => {
      clearTimeout(t);
      resolve();
    });
    s.closeIdleConnections();
  });
}
