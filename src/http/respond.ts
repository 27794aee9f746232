/**
 * The only place that writes XKS responses: JSON bodies, the right status, helmet's security
 * headers, and for errors the spec's {"errorName","errorMessage"} (printable ASCII, < 512
 * characters). Internal detail never reaches the client. Headers go out in one writeHead call.
 */
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { XksError } from '../errors/xks-error';
import { SECURITY_HEADERS_FLAT } from './security-headers';

const STATIC_HEADERS: readonly string[] = [...SECURITY_HEADERS_FLAT, 'Content-Type', 'application/json', 'Cache-Control', 'no-store'];

export function sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  const headers = [...STATIC_HEADERS, 'Content-Length', String(Buffer.byteLength(text))];
  if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) headers.push(k, v);
  res.writeHead(status, headers);
  res.end(text);
}

/**
 * The error name also goes in this header, on every error. A HEAD request gets exactly the headers
 * the same GET would, and by HTTP rules no body, so this header is where a HEAD caller reads the
 * error (docs/operator-guide.md, "Troubleshooting by error name").
 */
export const ERROR_NAME_HEADER = 'X-Xks-Error-Name';

function errorHeaders(err: XksError): Record<string, string> {
  const headers: Record<string, string> = { [ERROR_NAME_HEADER]: err.errorName };
  if (err.status === 405) headers['Allow'] = 'POST';
  // A body we refused to read leaves bytes on the connection: do not keep it alive.
  if (err.closeConnection) headers['Connection'] = 'close';
  return headers;
}

export function sendError(res: ServerResponse, err: XksError): void {
  sendJson(res, err.status, err.toBody(), errorHeaders(err));
}

/**
 * The same answer as raw bytes, for the listener's events that have a socket but no response
 * object (a malformed request, CONNECT): a complete HTTP/1.1 response that closes the connection.
 */
export function rawErrorResponse(err: XksError): string {
  const text = JSON.stringify(err.toBody());
  const headers: [string, string][] = [];
  for (let i = 0; i < STATIC_HEADERS.length; i += 2) headers.push([STATIC_HEADERS[i]!, STATIC_HEADERS[i + 1]!]);
  for (const [k, v] of Object.entries({ ...errorHeaders(err), 'Content-Length': String(Buffer.byteLength(text)), Connection: 'close' })) headers.push([k, v]);
  return `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${text}`;
}

/**
 * The one error shape of the operator-facing listeners (the admin API, the metrics listener):
 *   {"error": "<code>", "message": "<text>", ...details}
 * `error` is a stable, lower-case code (not-found, unauthorized, forbidden, invalid, internal,
 * unavailable, method-not-allowed, or a control error code) for scripts; `message` is for people.
 * The XKS listener keeps the spec's {"errorName","errorMessage"} (sendError above).
 */
export function serviceErrorBody(error: string, message: string, details: Record<string, unknown> = {}): Record<string, unknown> {
  return { error, message, ...details };
}

export function sendServiceError(res: ServerResponse, status: number, error: string, message: string, extraHeaders?: Record<string, string>): void {
  sendJson(res, status, serviceErrorBody(error, message), extraHeaders);
}
