/**
 * Raw HTTP/1.1 over a real TLS socket: for what a well-behaved client library never sends (no Host,
 * a bogus Expect, CONNECT, malformed request lines, a body dribbled byte by byte) and for choosing
 * the source address (localAddress, e.g. 127.0.0.2), so that per-peer limits can be tested.
 */
import fs from 'node:fs';
import tls from 'node:tls';

export interface RawResponse {
  status: number;
  /** Lower-case names; the last value wins. */
  headers: Record<string, string>;
  text: string;
  json: any;
}

export class RawConn {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: tls.TLSSocket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      });
    });
    // A reset by the server is an outcome the tests look at, not a crash.
    socket.on('error', () => undefined);
  }

  /** Connect to the proxy at 127.0.0.1:port, from `localAddress` when given. */
  static open(port: number, caFile: string, localAddress?: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: fs.readFileSync(caFile), ...(localAddress ? { localAddress } : {}) }, () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
      s.once('error', reject);
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Resolves with the server's next response (interim 1xx responses included), or undefined once the connection closed without one. */
  async response(opts: { head?: boolean } = {}): Promise<RawResponse | undefined> {
    for (;;) {
      const r = this.parse(opts.head === true);
      if (r) return r;
      if (this.ended) return undefined;
      await new Promise<void>((w) => this.waiters.push(w));
    }
  }

  /** The next final (non-1xx) response: interim ones such as "100 Continue" are skipped. */
  async finalResponse(opts: { head?: boolean } = {}): Promise<RawResponse | undefined> {
    for (;;) {
      const r = await this.response(opts);
      if (!r || r.status >= 200) return r;
    }
  }

  /** Everything received and not yet parsed as a response. */
  pending(): string {
    return this.buf.toString('latin1');
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private parse(head: boolean): RawResponse | undefined {
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(lines[0]!.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const bodyLen = head || status < 200 ? 0 : Number(headers['content-length'] ?? 0);
    if (this.buf.length < end + 4 + bodyLen) return undefined;
    const text = this.buf.subarray(end + 4, end + 4 + bodyLen).toString('utf8');
    this.buf = this.buf.subarray(end + 4 + bodyLen);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status, headers, text, json };
  }
}
