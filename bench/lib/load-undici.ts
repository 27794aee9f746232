/**
 * An undici-based load generator: HTTPS keep-alive connections, pre-signed requests cycled.
 *  - closed loop: `connections` workers, each sends its next request when the last one answered;
 *  - open loop: requests are sent at a fixed offered rate whatever the answers, and latency is
 *    measured from the moment each request was due (no coordinated omission).
 */
import { Pool } from 'undici';
import type { PreparedRequest } from './workloads';

export interface LoadResult {
  generator: string;
  mode: 'closed' | 'open';
  connections: number;
  offeredRps?: number;
  durationS: number;
  requests: number;
  ok: number;
  errors: Record<string, number>;
  rps: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
}

export interface LoadOptions {
  origin: string;
  ca: Buffer;
  requests: PreparedRequest[];
  connections: number;
  durationMs: number;
}

class Recorder {
  private samples = new Float64Array(1 << 16);
  private n = 0;
  ok = 0;
  errors: Record<string, number> = {};
  add(ms: number, status: number, errorName?: string): void {
    if (this.n === this.samples.length) {
      const bigger = new Float64Array(this.samples.length * 2);
      bigger.set(this.samples);
      this.samples = bigger;
    }
    this.samples[this.n++] = ms;
    if (status === 200) this.ok++;
    else {
      const k = `${status}${errorName ? ' ' + errorName : ''}`;
      this.errors[k] = (this.errors[k] ?? 0) + 1;
    }
  }
  result(base: Omit<LoadResult, 'requests' | 'ok' | 'errors' | 'rps' | 'latencyMs'>): LoadResult {
    const s = this.samples.subarray(0, this.n).sort();
    const q = (p: number) => (this.n ? Math.round(s[Math.min(this.n - 1, Math.floor(p * this.n))]! * 100) / 100 : 0);
    return { ...base, requests: this.n, ok: this.ok, errors: this.errors, rps: Math.round(this.n / base.durationS), latencyMs: { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: this.n ? Math.round(s[this.n - 1]! * 100) / 100 : 0 } };
  }
}

function pool(o: LoadOptions): Pool {
  return new Pool(o.origin, { connections: o.connections, pipelining: 1, connect: { ca: o.ca, servername: 'localhost' }, keepAliveTimeout: 60_000 });
}

async function send(p: Pool, r: PreparedRequest, rec: Recorder, started: number): Promise<void> {
  try {
    const res = await p.request({ path: r.path, method: 'POST', headers: r.headers, body: r.body });
    const text = await res.body.text();
    let errorName: string | undefined;
    if (res.statusCode !== 200) {
      try {
        errorName = (JSON.parse(text) as { errorName?: string }).errorName;
      } catch {
        errorName = 'non-JSON';
      }
    }
    rec.add(performance.now() - started, res.statusCode, errorName);
  } catch (e) {
    rec.add(performance.now() - started, 0, (e as Error).name);
  }
}

export async function closedLoop(o: LoadOptions): Promise<LoadResult> {
  const p = pool(o);
  const rec = new Recorder();
  let i = 0;
  const start = performance.now();
  const deadline = start + o.durationMs;
  await Promise.all(
    Array.from({ length: o.connections }, async () => {
      while (performance.now() < deadline) {
        const r = o.requests[i++ % o.requests.length]!;
        await send(p, r, rec, performance.now());
      }
    }),
  );
  const durationS = (performance.now() - start) / 1000;
  await p.close();
  return rec.result({ generator: 'undici', mode: 'closed', connections: o.connections, durationS });
}

export async function openLoop(o: LoadOptions & { rate: number }): Promise<LoadResult> {
  const p = pool(o);
  const rec = new Recorder();
  const inflight = new Set<Promise<void>>();
  let sent = 0;
  const start = performance.now();
  const interval = 1000 / o.rate;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      if (now - start >= o.durationMs) return resolve();
      // Every request that is due by now is sent, timed from when it was due.
      while (start + sent * interval <= now) {
        const due = start + sent * interval;
        const r = o.requests[sent++ % o.requests.length]!;
        const pr = send(p, r, rec, due).finally(() => inflight.delete(pr));
        inflight.add(pr);
      }
      // A 1 ms timer, not setImmediate: a spinning generator would take a core from the proxy.
      setTimeout(tick, 1);
    };
    tick();
  });
  await Promise.all(inflight);
  const durationS = (performance.now() - start) / 1000;
  await p.close();
  return rec.result({ generator: 'undici', mode: 'open', connections: o.connections, offeredRps: o.rate, durationS });
}
