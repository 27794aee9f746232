/**
 * Memory over time under load: the real proxy (child process) driven by wrk at a fixed
 * concurrency with encrypt32, RSS sampled every interval. Prints the series and the growth from
 * the first sample after warm-up to the last. Asserts nothing (a figure, not a test).
 *
 *   node dist/bench/soak.js [--minutes 10] [--interval 30] [--connections 32]
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { wrkAvailable, wrkScriptFiles } from './lib/load-wrk';
import { BENCH_KEY, KEY_STORE_PREFIX, startTarget } from './lib/setup';
import { prepare } from './lib/workloads';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { minutes: { type: 'string', default: '10' }, interval: { type: 'string', default: '30' }, connections: { type: 'string', default: '32' } } });
  if (!wrkAvailable()) throw new Error('the soak uses wrk: apt-get install wrk');
  const target = await startTarget();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-soak-'));
  try {
    const t = { host: `localhost:${target.port}`, prefix: KEY_STORE_PREFIX, keyId: BENCH_KEY, cred: target.cred };
    // Requests stay valid for the 5-minute SigV4 window: sign a fresh set for every 4 minutes.
    const seconds = Number(values.minutes) * 60;
    const samples: { atS: number; rssMiB: number }[] = [{ atS: 0, rssMiB: target.rssMiB() }];
    const start = Date.now();
    let requests = 0;
    let errors = 0;
    while ((Date.now() - start) / 1000 < seconds) {
      const chunk = Math.min(240, seconds - Math.floor((Date.now() - start) / 1000));
      const files = wrkScriptFiles(dir, await prepare(t, 'encrypt32', 4000, async () => { throw new Error('not used'); }));
      const wrk = spawn('wrk', ['-t', '1', '-c', values.connections!, '-d', `${chunk}s`, '--timeout', '2s', '-s', files.script, `https://127.0.0.1:${target.port}/`, '--', files.requests]);
      let out = '';
      wrk.stdout.on('data', (d: Buffer) => (out += d));
      const sampler = setInterval(() => samples.push({ atS: Math.round((Date.now() - start) / 1000), rssMiB: target.rssMiB() }), Number(values.interval) * 1000);
      await new Promise((r) => wrk.on('exit', r));
      clearInterval(sampler);
      const line = out.split('\n').find((l) => l.startsWith('WRK-RESULT '));
      if (line) {
        const w = JSON.parse(line.slice('WRK-RESULT '.length)) as Record<string, number>;
        requests += w.requests!;
        errors += (w.status_errors ?? 0) + (w.timeouts ?? 0);
      }
    }
    samples.push({ atS: Math.round((Date.now() - start) / 1000), rssMiB: target.rssMiB() });
    const warm = samples.find((s) => s.atS >= 60) ?? samples[1]!;
    const last = samples[samples.length - 1]!;
    console.log(JSON.stringify({ minutes: Number(values.minutes), requests, errors, rpsAverage: Math.round(requests / ((Date.now() - start) / 1000)), samples }, null, 1));
    console.log(`RSS: ${samples[0]!.rssMiB} MiB idle, ${warm.rssMiB} MiB after warm-up (${warm.atS} s), ${last.rssMiB} MiB at the end (${last.atS} s): growth ${Math.round((last.rssMiB - warm.rssMiB) * 10) / 10} MiB`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    await target.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
