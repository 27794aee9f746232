/**
 * wrk (Debian package `wrk`) as the closed-loop generator when it is installed: written in C, it
 * leaves more of the 2 cores to the proxy than a Node generator does. It sends our pre-signed raw
 * requests in turn (a Lua script), so every request is still a complete, valid SigV4 request.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { LoadResult } from './load-undici';
import type { PreparedRequest } from './workloads';

const SEPARATOR = '\n@@XKS-BENCH@@\n';

const LUA = `
local reqs = {}
local idx = 0
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local sep = ${JSON.stringify(SEPARATOR)}
  local start = 1
  while true do
    local s, e = string.find(data, sep, start, true)
    if not s then break end
    reqs[#reqs + 1] = string.sub(data, start, s - 1)
    start = e + 1
  end
  idx = math.random(#reqs)
end
request = function()
  idx = idx + 1
  if idx > #reqs then idx = 1 end
  return reqs[idx]
end
done = function(summary, latency, requests)
  io.write(string.format('WRK-RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
`;

export function wrkAvailable(): boolean {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (e) {
    // wrk --version exits 1 after printing its version.
    return (e as { status?: number }).status === 1;
  }
}

/** The Lua script and the raw requests it cycles through, written into `dir`. */
export function wrkScriptFiles(dir: string, requests: PreparedRequest[]): { script: string; requests: string } {
  const raw = requests.map((r) => `POST ${r.path} HTTP/1.1\r\n` + Object.entries(r.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') + `\r\n${r.body}` + SEPARATOR).join('');
  const files = { script: path.join(dir, 'bench.lua'), requests: path.join(dir, 'requests.raw') };
  fs.writeFileSync(files.requests, raw);
  fs.writeFileSync(files.script, LUA);
  return files;
}

export async function wrkClosedLoop(o: { port: number; host: string; requests: PreparedRequest[]; connections: number; threads: number; durationMs: number }): Promise<LoadResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-wrk-'));
  try {
    const files = wrkScriptFiles(dir, o.requests);
    const secs = Math.max(1, Math.round(o.durationMs / 1000));
    const { stdout } = await promisify(execFile)('wrk', ['-t', String(o.threads), '-c', String(o.connections), '-d', `${secs}s`, '--timeout', '2s', '-s', files.script, `https://127.0.0.1:${o.port}/`, '--', files.requests], { maxBuffer: 1 << 20 });
    const line = stdout.split('\n').find((l) => l.startsWith('WRK-RESULT '));
    if (!line) throw new Error(`wrk printed no result:\n${stdout}`);
    const w = JSON.parse(line.slice('WRK-RESULT '.length)) as Record<string, number>;
    const durationS = w.duration_us! / 1e6;
    const errors: Record<string, number> = {};
    for (const k of ['status_errors', 'connect_errors', 'read_errors', 'write_errors', 'timeouts']) if (w[k]) errors[k] = w[k]!;
    const ms = (us: number) => Math.round(us / 10) / 100;
    return {
      generator: 'wrk',
      mode: 'closed',
      connections: o.connections,
      durationS,
      requests: w.requests!,
      ok: w.requests! - (w.status_errors ?? 0),
      errors,
      rps: Math.round(w.requests! / durationS),
      latencyMs: { p50: ms(w.p50_us!), p90: ms(w.p90_us!), p99: ms(w.p99_us!), max: ms(w.max_us!) },
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
