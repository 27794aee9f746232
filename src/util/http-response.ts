/** Collect an HTTP response: status, headers, text, and the JSON value when the text parses. */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';

export interface CollectedResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** undefined when the body is not JSON. */
  json: any;
}

export function collectResponse(res: IncomingMessage): Promise<CollectedResponse> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('error', reject);
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
    });
  });
}
