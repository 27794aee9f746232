/**
 * The proxy in front of an emulated network HSM (bench/lib/network-hsm.ts): for each HSM call
 * latency and call mode, encrypt32 at a fixed offered rate; served req/s and client p50/p99 in
 * one table (markdown, for docs/performance.md).
 *
 *   npm run build && node dist/bench/network-hsm.js [--latencies 0.5,2,5] [--modes sync,async]
 *        [--rate 1800] [--duration 10] [--connections 64] [--workers auto|1,2] [--out FILE.json]
 *
 * --workers: server.workers, one or several (a row each); 'auto' (default) is the product default.
 *
 * Needs a C compiler (cc) for the emulation module.
 */
import fs from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { formatNetworkHsmTable, formatStallTable, networkHsmRun, type NetworkHsmRow } from './lib/network-hsm';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      latencies: { type: 'string', default: '0.5,2,5' },
      modes: { type: 'string', default: 'sync,async' },
      rate: { type: 'string', default: '1800' },
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '64' },
      workers: { type: 'string', default: 'auto' },
      out: { type: 'string' },
    },
  });
  const workerCounts = values.workers!.split(',').map((w) => (w === 'auto' ? undefined : Number(w)));
  const rows: NetworkHsmRow[] = [];
  for (const holdMs of values.latencies!.split(',').map(Number)) {
    for (const callMode of values.modes!.split(',') as ('sync' | 'async')[]) {
      for (const workers of workerCounts) {
        const r = await networkHsmRun({ holdMs, callMode, rate: Number(values.rate), durationMs: Number(values.duration) * 1000, connections: Number(values.connections), ...(workers ? { workers } : {}) });
        rows.push(r);
        process.stderr.write(`HSM ${holdMs} ms, ${callMode}, ${r.workers} worker(s): ${r.servedRps}/s served of ${r.offeredRps}, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, errors ${JSON.stringify(r.errors)}, load ${r.load1}\n`);
      }
    }
  }
  console.log(`\nencrypt32 against an emulated network HSM, ${values.rate}/s offered, open loop, ${values.connections} connections, ${values.duration} s each; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}\n`);
  console.log(formatNetworkHsmTable(rows));
  console.log('\nwhere the tail came from:\n');
  console.log(formatStallTable(rows));
  if (values.out) fs.writeFileSync(values.out, JSON.stringify({ date: new Date().toISOString(), loadavg: os.loadavg(), rows }, null, 2) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
