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
import type { Duplex } from 'node:stream';
import type { Config } from '../config/schema';
import { XksError, methodNotAllowed } from '../errors/xks-error';
import { rawErrorResponse, sendError } from './respond';

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
    ...JSON_ONLY_OPTIONS,
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
  const s = http.createServer({ headersTimeout: 2000, requestTimeout: 5000, ...JSON_ONLY_OPTIONS }, handler);
  hardenClientErrors(s);
  return s;
}

/**
 * Options that keep Node from answering on its own: without them a request lacking Host gets an
 * empty 400 from Node itself (the pipeline answers it in JSON instead), and the header/request
 * timeouts are only checked every 30 s (Node's default), which lets a slow client hold a
 * connection far past them.
 */
const JSON_ONLY_OPTIONS: http.ServerOptions = { requireHostHeader: false, connectionsCheckingInterval: 1000 };

/**
 * Every answer on the listener is JSON with a spec errorName (spec "Error codes": a response
 * without one is "uninterpretable" to KMS), including the ones Node would otherwise write itself
 * with an empty body, or answer by closing the connection:
 *  - a malformed request, oversize headers, a request timeout ('clientError'): 400/431/408
 *    ValidationException, written only while no response of ours is under way on the socket;
 *  - an Expect other than 100-continue ('checkExpectation'): 417 ValidationException
 *    (100-continue keeps Node's handling: "100 Continue", then the request runs);
 *  - CONNECT ('connect'): 405 UnsupportedOperationException, as for any method but POST.
 * None of these crashes the process.
 */
function hardenClientErrors(s: http.Server): void {
  s.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex & { _httpMessage?: { headersSent?: boolean } }) => {
    const responding = socket._httpMessage?.headersSent === true;
    if (err.code === 'ECONNRESET' || !socket.writable || responding) {
      socket.destroy();
      return;
    }
    endWith(socket, clientErrorAnswer(err.code));
  });
  s.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const e = new XksError('ValidationException', 'Unsupported Expect header: only "100-continue" is supported.', `expect ${String(req.headers.expect).slice(0, 64)}`, 417);
    // The body the client may send anyway is not read.
    e.closeConnection = true;
    sendError(res, e);
  });
  s.on('connect', (_req: http.IncomingMessage, socket: Duplex) => endWith(socket, methodNotAllowed('CONNECT')));
}

function clientErrorAnswer(code: string | undefined): XksError {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return new XksError('ValidationException', 'The request headers are too large.', 'header overflow', 431);
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new XksError('ValidationException', 'The request did not arrive in time.', 'request timeout', 408);
    default:
      return new XksError('ValidationException', 'Malformed HTTP request.', `parse error ${code ?? ''}`);
  }
}

/**
 * Answer on a raw socket and close our side. The socket is not destroyed at once: closing it with
 * unread input makes the kernel reset the connection, which can discard the answer before the
 * client reads it. A client that does not close its side in time is cut off.
 */
function endWith(socket: Duplex, err: XksError): void {
  socket.end(rawErrorResponse(err));
  const cutOff = setTimeout(() => socket.destroy(), RAW_ANSWER_LINGER_MS);
  cutOff.unref();
  socket.once('close', () => clearTimeout(cutOff));
}

const RAW_ANSWER_LINGER_MS = 2000;

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
