/**
 * Read the raw request body with a hard cap: a declared Content-Length over the cap is refused
 * before a byte is read, and a streamed (chunked) body is refused as soon as it passes the cap,
 * so nothing is ever buffered past it. SigV4 then verifies exactly these bytes.
 *
 * The body also has a deadline of its own, counted from the moment the headers are in: KMS sends
 * its small bodies at once, and a client that dribbles one (a slow upload holding a slot without
 * credentials) is answered and disconnected when it passes.
 */
import type { IncomingMessage } from 'node:http';
import { XksError } from '../errors/xks-error';

export function readRawBody(req: IncomingMessage, maxBytes: number, deadlineMs?: number, late: (deadlineMs: number, received: number) => XksError = tooSlow): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBytes) {
    return Promise.reject(tooLarge(maxBytes, `declared Content-Length ${declared}`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const timer = deadlineMs === undefined ? undefined : setTimeout(() => {
      req.pause();
      finish(late(deadlineMs, size));
    }, deadlineMs);
    const finish = (err: XksError | undefined, body?: Buffer) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      if (err) reject(err);
      else resolve(body!);
    };
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > maxBytes) {
        // Stop reading; the error writer closes the connection after answering.
        req.pause();
        finish(tooLarge(maxBytes, 'streamed body'));
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => finish(undefined, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    const onError = (e: Error) => finish(new XksError('ValidationException', 'The request body could not be read.', `body read error: ${e.message}`));
    const onAborted = () => finish(new XksError('ValidationException', 'The request body was incomplete.', 'client aborted the body').because('body.aborted'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
  });
}

function tooSlow(deadlineMs: number, received: number): XksError {
  const e = new XksError('ValidationException', `The request body did not arrive within ${deadlineMs} ms.`, `body deadline passed after ${received} bytes`).because('body.deadline');
  e.closeConnection = true;
  return e;
}

function tooLarge(maxBytes: number, what: string): XksError {
  const e = new XksError('UnsupportedOperationException', `The request body is larger than ${maxBytes} bytes.`, `body over the cap: ${what}`).because('body.too_large');
  e.closeConnection = true;
  return e;
}
