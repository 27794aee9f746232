/**
 * Where the loaded proxy spends its CPU: the real proxy (`xks-proxy serve`, a child process) under
 * node --cpu-prof, driven with encrypt32 by wrk at a fixed concurrency; then the profile's self
 * time by function and by owner: ours (dist/src), libraries (node_modules), Node itself
 * (node:internal: TLS, HTTP, streams), native and GC.
 *
 *   npm run build && node dist/bench/profile.js [--duration 10] [--connections 32] [--top 30]
 *        [--workload encrypt32] [--keep DIR]   (DIR: where the .cpuprofile is kept, for devtools)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { wrkAvailable, wrkClosedLoop } from './lib/load-wrk';
import { BENCH_KEY, KEY_STORE_PREFIX, startTarget } from './lib/setup';
import { prepare, type WorkloadName } from './lib/workloads';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function owner(url: string, fn: string): string {
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(idle)') return 'idle';
  if (fn === '(program)' || url === '') return 'native / V8 (program)';
  if (url.includes('/dist/src/')) return 'ours (dist/src)';
  if (url.includes('/node_modules/')) return `library ${/node_modules\/((@[^/]+\/)?[^/]+)/.exec(url)?.[1]}`;
  if (url.startsWith('node:')) return 'Node (node:internal)';
  return 'other';
}

export function summarise(profile: CpuProfile, top: number): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fnTime = new Map<string, number>();
  const ownerTime = new Map<string, number>();
  for (const [id, us] of self) {
    const f = byId.get(id)!.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    fnTime.set(key, (fnTime.get(key) ?? 0) + us);
    const o = owner(f.url, f.functionName);
    ownerTime.set(o, (ownerTime.get(o) ?? 0) + us);
  }
  const pct = (us: number) => `${((us / total) * 100).toFixed(1).padStart(5)}%`;
  const lines = ['self time by owner:'];
  for (const [o, us] of [...ownerTime].sort((a, b) => b[1] - a[1])) lines.push(`  ${pct(us)}  ${o}`);
  lines.push(`\nself time by function (top ${top}):`);
  for (const [k, us] of [...fnTime].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${k}`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { duration: { type: 'string', default: '10' }, connections: { type: 'string', default: '32' }, top: { type: 'string', default: '30' }, workload: { type: 'string', default: 'encrypt32' }, keep: { type: 'string' } } });
  if (!wrkAvailable()) throw new Error('wrk is not installed (apt-get install wrk)');
  const profDir = values.keep ?? fs.mkdtempSync(path.join(os.tmpdir(), 'xks-prof-'));
  fs.mkdirSync(profDir, { recursive: true });
  const target = await startTarget({ nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] });
  let rps = 0;
  try {
    const t = { host: `localhost:${target.port}`, prefix: KEY_STORE_PREFIX, keyId: BENCH_KEY, cred: target.cred };
    const requests = await prepare(t, values.workload as WorkloadName, 4000, () => Promise.reject(new Error('profile: encrypt workloads only')));
    await wrkClosedLoop({ port: target.port, host: t.host, requests, connections: Number(values.connections), threads: 1, durationMs: 2000 });
    const r = await wrkClosedLoop({ port: target.port, host: t.host, requests, connections: Number(values.connections), threads: 1, durationMs: Number(values.duration) * 1000 });
    rps = r.rps;
  } finally {
    await target.stop(); // the profile is written at exit
  }
  const file = fs.readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(profDir, f)).sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  if (!file) throw new Error(`no .cpuprofile in ${profDir}`);
  console.log(`${values.workload}: ${rps} req/s under --cpu-prof (profiling slows the proxy), load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; profile ${file}\n`);
  console.log(summarise(JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile, Number(values.top)));
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
