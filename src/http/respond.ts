/**
 * The only place that writes XKS responses: JSON bodies, the right status, and for errors the
 * spec's {"errorName","errorMessage"} (printable ASCII, < 512 characters). Internal detail never
 * reaches the client.
 */
import type { ServerResponse } from 'node:http';
import type { XksError } from '../errors/xks-error';

export function sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.setHeader('Cache-Control', 'no-store');
  if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) res.setHeader(k, v);
  res.end(text);
}

export function sendError(res: ServerResponse, err: XksError): void {
  const headers: Record<string, string> = {};
  if (err.errorName === 'MethodNotAllowed') headers['Allow'] = 'POST';
  // A body we refused to read leaves bytes on the connection: do not keep it alive.
  if (err.closeConnection) headers['Connection'] = 'close';
  sendJson(res, err.status, err.toBody(), headers);
}
