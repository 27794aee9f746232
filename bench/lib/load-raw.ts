/**
 * A lean open-loop generator: pre-serialised HTTP/1.1 requests written straight to kept-alive TLS
 * sockets, answers read with a minimal Content-Length parser (the proxy always sends one). At the
 * rates of this benchmark an HTTP client library costs the generator ~180 us per request on this
 * machine, enough to make the generator, not the proxy, the bottleneck at twice capacity; this
 * one costs a fraction of that and so leaves the cores to the proxy.
 *
 * Requests are sent at a fixed offered rate whatever the answers, each timed from the moment it
 * was due (no coordinated omission): a request due while every connection is busy waits in the
 * generator's queue, and that wait counts, as it would for a client with that many connections.
 * Connections are opened and warmed up first (not recorded).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import tls from 'node:tls';
import { Recorder, type LoadResult } from './load-undici';
import type { PreparedRequest } from './workloads';

export interface RawOpenLoopOptions {
  port: number;
  host: string;
  ca: Buffer;
  requests: PreparedRequest[];
  connections: number;
  durationMs: number;
  rate: number;
  warmupMs?: number;
  /** Called between the warm-up and the measured run (e.g. to reset the proxy's lag gauges). */
  beforeMeasure?: () => Promise<void>;
}

/**
 * Where a run's slow requests came from: the generator's own event-loop delay (a stall of the
 * generator makes every request due during it late, and open loop rightly counts that, but it is
 * not the proxy's), and how the requests over a bound spread in time (one stall or many).
 */
export interface StallReport {
  generatorLoopDelayMs: { p99: number; max: number };
  /** Requests slower than `boundMs`, and the distinct 100 ms windows (by due time) they were due in. */
  slow: { boundMs: number; requests: number; windows: number };
}

interface Pending {
  due: number;
}

/** One kept-alive connection with at most one request outstanding. */
class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private current: Pending | undefined;
  onDone: (c: Connection, ms: number, status: number, errorName: string | undefined, due: number) => void = () => undefined;
  /** Told once, when the socket is gone: the connection must not be handed a request again. */
  onClosed: (c: Connection) => void = () => undefined;
  closed = false;

  constructor(private readonly socket: tls.TLSSocket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', () => this.fail('socket error'));
    socket.on('close', () => {
      this.closed = true;
      this.fail('closed');
      this.onClosed(this);
    });
  }

  get busy(): boolean {
    return this.current !== undefined;
  }

  send(raw: Buffer, due: number): void {
    this.current = { due };
    this.socket.write(raw);
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(why: string): void {
    const p = this.current;
    this.current = undefined;
    if (p) this.onDone(this, performance.now() - p.due, 0, why, p.due);
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const length = m ? Number(m[1]) : 0;
    if (this.buf.length < end + 4 + length) return;
    const status = Number(head.slice(9, 12));
    const body = this.buf.subarray(end + 4, end + 4 + length);
    this.buf = this.buf.subarray(end + 4 + length);
    let errorName: string | undefined;
    if (status !== 200) errorName = /"errorName":"([A-Za-z]+)"/.exec(body.toString('utf8'))?.[1] ?? 'non-JSON';
    const p = this.current;
    this.current = undefined;
    if (p) this.onDone(this, performance.now() - p.due, status, errorName, p.due);
  }
}

function serialise(r: PreparedRequest): Buffer {
  const headers = Object.entries(r.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return Buffer.from(`POST ${r.path} HTTP/1.1\r\n${headers}\r\n${r.body}`, 'utf8');
}

async function connect(o: RawOpenLoopOptions): Promise<Connection> {
  const socket = tls.connect({ port: o.port, host: '127.0.0.1', servername: 'localhost', ca: o.ca });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return new Connection(socket);
}

export async function rawOpenLoop(o: RawOpenLoopOptions & { slowBoundMs?: number }): Promise<LoadResult & { stalls: StallReport }> {
  const raw = o.requests.map(serialise);
  // Open the connections a few at a time: a storm of handshakes is not what is being measured.
  const conns: Connection[] = [];
  for (let i = 0; i < o.connections; i += 16) {
    conns.push(...(await Promise.all(Array.from({ length: Math.min(16, o.connections - i) }, () => connect(o)))));
  }
  try {
    await run(o, conns, raw, o.warmupMs ?? 1000, new Recorder());
    await o.beforeMeasure?.();
    const rec = new Recorder();
    const boundMs = o.slowBoundMs ?? 25;
    const slowWindows = new Set<number>();
    let slow = 0;
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    const durationS = await run(o, conns, raw, o.durationMs, rec, (due, ms) => {
      if (ms <= boundMs) return;
      slow++;
      slowWindows.add(Math.floor(due / 100));
    });
    delay.disable();
    const ms = (ns: number) => Math.round(ns / 1e4) / 100;
    const stalls: StallReport = { generatorLoopDelayMs: { p99: ms(delay.percentile(99)), max: ms(delay.max) }, slow: { boundMs, requests: slow, windows: slowWindows.size } };
    return { ...rec.result({ generator: 'raw TLS (open loop)', mode: 'open', connections: o.connections, offeredRps: o.rate, durationS }), stalls };
  } finally {
    for (const c of conns) c.close();
  }
}

/** Offers o.rate requests per second for durationMs; resolves when all answers are in. */
function run(o: RawOpenLoopOptions, conns: Connection[], raw: Buffer[], durationMs: number, rec: Recorder, onAnswer?: (due: number, ms: number) => void): Promise<number> {
  return new Promise((resolve) => {
    const idle: Connection[] = conns.filter((c) => !c.busy && !c.closed);
    const queue: number[] = []; // due times of requests waiting for a connection
    let sent = 0;
    let outstanding = 0;
    let next = Math.floor(Math.random() * raw.length);
    let finishedSending = false;
    const start = performance.now();
    const interval = 1000 / o.rate;
    let alive = conns.filter((c) => !c.closed).length;
    const dispatch = () => {
      // Every connection lost: what waits can never be sent.
      while (alive === 0 && queue.length > 0) {
        rec.add(performance.now() - queue.shift()!, 0, 'no connection');
        outstanding--;
      }
      while (queue.length > 0 && idle.length > 0) {
        // Round robin, as a client's pool spreads over its connections: a connection left idle at
        // the bottom of a stack would meet the server's idle timeout and be closed under it.
        const c = idle.shift()!;
        c.send(raw[next++ % raw.length]!, queue.shift()!);
      }
    };
    const maybeEnd = () => {
      if (finishedSending && outstanding === 0) resolve((performance.now() - start) / 1000);
    };
    for (const c of conns) {
      // A connection closed by the server, idle or not: never used again (a request written to a
      // destroyed socket would never be answered, and the run would wait for it for ever).
      c.onClosed = (conn) => {
        alive--;
        const i = idle.indexOf(conn);
        if (i >= 0) idle.splice(i, 1);
        dispatch();
        maybeEnd();
      };
      c.onDone = (conn, ms, status, errorName, due) => {
        rec.add(ms, status, errorName);
        onAnswer?.(due, ms);
        outstanding--;
        if (status !== 0 && !conn.closed) idle.push(conn);
        dispatch();
        maybeEnd();
      };
    }
    const tick = () => {
      const now = performance.now();
      const until = Math.min(now, start + durationMs);
      // Every request due by now is queued with its due time, then handed to an idle connection.
      while (start + sent * interval <= until) {
        queue.push(start + sent * interval);
        sent++;
        outstanding++;
      }
      dispatch();
      if (now - start >= durationMs) {
        finishedSending = true;
        maybeEnd();
        return;
      }
      // A 1 ms timer, not setImmediate: a spinning generator would take a core from the proxy.
      setTimeout(tick, 1);
    };
    tick();
  });
}
