/**
 * An undici-based closed-loop load generator, the fallback when wrk is not installed: HTTPS
 * keep-alive connections, pre-signed requests cycled, `connections` workers each sending its next
 * request when the last one was answered. (Fixed-rate runs use load-raw.ts.) Also the shared
 * LoadResult type and its recorder.
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
  /** The same over the 200 answers only (in an overload run, what the served requests saw). */
  okLatencyMs?: { p50: number; p90: number; p99: number; max: number };
}

export interface LoadOptions {
  origin: string;
  ca: Buffer;
  requests: PreparedRequest[];
  connections: number;
  durationMs: number;
}

/** Latency samples (ms), grown as needed, summarised as percentiles. */
class Samples {
  private values = new Float64Array(1 << 16);
  n = 0;
  add(ms: number): void {
    if (this.n === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.n++] = ms;
  }
  percentiles(): { p50: number; p90: number; p99: number; max: number } {
    const s = this.values.subarray(0, this.n).sort();
    const q = (p: number) => (this.n ? Math.round(s[Math.min(this.n - 1, Math.floor(p * this.n))]! * 100) / 100 : 0);
    return { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: q(1) };
  }
}

export class Recorder {
  private all = new Samples();
  private okOnly = new Samples();
  ok = 0;
  errors: Record<string, number> = {};
  add(ms: number, status: number, errorName?: string): void {
    this.all.add(ms);
    if (status === 200) {
      this.ok++;
      this.okOnly.add(ms);
    } else {
      const k = `${status}${errorName ? ' ' + errorName : ''}`;
      this.errors[k] = (this.errors[k] ?? 0) + 1;
    }
  }
  result(base: Omit<LoadResult, 'requests' | 'ok' | 'errors' | 'rps' | 'latencyMs'>): LoadResult {
    return { ...base, requests: this.all.n, ok: this.ok, errors: this.errors, rps: Math.round(this.all.n / base.durationS), latencyMs: this.all.percentiles(), okLatencyMs: this.okOnly.percentiles() };
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
