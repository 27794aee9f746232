/**
 * The only place that writes XKS responses: JSON bodies, the right status, helmet's security
 * headers, and for errors the spec's {"errorName","errorMessage"} (printable ASCII, < 512
 * characters). Internal detail never reaches the client. Headers go out in one writeHead call.
 */
import type { ServerResponse } from 'node:http';
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

export function sendError(res: ServerResponse, err: XksError): void {
  const headers: Record<string, string> = {};
  if (err.status === 405) headers['Allow'] = 'POST';
  // A body we refused to read leaves bytes on the connection: do not keep it alive.
  if (err.closeConnection) headers['Connection'] = 'close';
  sendJson(res, err.status, err.toBody(), headers);
}
