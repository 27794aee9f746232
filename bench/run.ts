/**
 * npm run bench: drives the real proxy (a child process on a fresh SoftHSM2 token) over HTTPS with
 * keep-alive and pre-signed, fully valid SigV4 requests, and measures in the same run the raw
 * in-process SoftHSM2 encrypt rate, to print the proxy/raw ratio. Prints a table, writes JSON.
 *
 *   npm run bench -- [--workloads encrypt32,decrypt32,mixed,encrypt4300,metadata,encrypt32-cdiv]
 *                    [--duration 10] [--connections 32] [--rate 1800] [--generator auto|wrk|undici]
 *                    [--workers 1] [--hsm-call-mode sync|async] [--quick]
 *                    [--out bench/results/NAME.json]
 *
 * Also, in the same run: the `hsm` ceiling layer (bench/ceiling.ts: TLS + SigV4 + the SoftHSM2
 * call and nothing else, same client and connections) for the proxy/ceiling ratio, and encrypt32
 * at the fixed rate against an emulated network HSM at 2 ms per call (bench/lib/network-hsm.ts,
 * the network-HSM example settings). Ends with one summary line of the figures that matter.
 * --quick: encrypt32 only, 4 s per measurement, no overload run (about a minute).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { rawOpenLoop } from './lib/load-raw';
import { closedLoop, type LoadResult } from './lib/load-undici';
import { wrkAvailable, wrkClosedLoop } from './lib/load-wrk';
import { rawEncryptRate } from './lib/raw-hsm';
import { BENCH_KEY, KEY_STORE_PREFIX, fileSize, serverLatency, startTarget } from './lib/setup';
import { WORKLOADS, prepare, type PreparedRequest, type WorkloadName } from './lib/workloads';
import { VERSION } from '../src/version';
import { ceilingWorkerMain, measureCeiling, type CeilingRow } from './ceiling';
import { networkHsmRun } from './lib/network-hsm';
import os from 'node:os';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      workloads: { type: 'string', default: 'encrypt32,decrypt32,mixed,encrypt4300,metadata,encrypt32-cdiv' },
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '32' },
      rate: { type: 'string', default: '1800' },
      generator: { type: 'string', default: 'auto' },
      'raw-seconds': { type: 'string', default: '3' },
      'overload-factor': { type: 'string', default: '2' },
      workers: { type: 'string', default: '1' },
      'hsm-call-mode': { type: 'string', default: 'sync' },
      out: { type: 'string' },
      quick: { type: 'boolean' },
    },
  });
  if (values.quick) {
    values.workloads = 'encrypt32';
    values.duration = '4';
    values['raw-seconds'] = '1';
    values['overload-factor'] = '0';
  }
  const durationMs = Number(values.duration) * 1000;
  const connections = Number(values.connections);
  const workloads = values.workloads!.split(',') as WorkloadName[];
  for (const w of workloads) if (!(w in WORKLOADS)) throw new Error(`unknown workload ${w}`);
  const useWrk = values.generator === 'wrk' || (values.generator === 'auto' && wrkAvailable());

  const target = await startTarget({ workers: Number(values.workers), env: { XKS__HSM__CALLMODE: values['hsm-call-mode'] } });
  const ca = fs.readFileSync(target.certFile);
  const origin = `https://localhost:${target.port}`;
  const t = { host: `localhost:${target.port}`, prefix: KEY_STORE_PREFIX, keyId: BENCH_KEY, cred: target.cred };
  const setupPool = new Pool(origin, { connections: 4, connect: { ca, servername: 'localhost' } });
  const encryptVia = async (r: PreparedRequest) => {
    const res = await setupPool.request({ path: r.path, method: 'POST', headers: r.headers, body: r.body });
    const json = (await res.body.json()) as { ciphertext: string; initializationVector: string; authenticationTag: string };
    if (res.statusCode !== 200) throw new Error(`setup encrypt failed: ${res.statusCode} ${JSON.stringify(json)}`);
    return { ciphertext: json.ciphertext, initializationVector: json.initializationVector, authenticationTag: json.authenticationTag };
  };

  const results: { workload: WorkloadName; description: string; result: LoadResult; rssMiBUnderLoad: number }[] = [];
  let rateResult: LoadResult | undefined;
  let overloadResult: LoadResult | undefined;
  let rateServerSide: ReturnType<typeof serverLatency> | undefined;
  let raw: { opsPerSecond: number; ops: number } | undefined;
  let ceilingHsm: CeilingRow | undefined;
  const rssIdle = target.rssMiB();
  try {
    raw = await rawEncryptRate(target.hsmConfig, target.pin, BENCH_KEY, Number(values['raw-seconds']) * 1000);
    process.stderr.write(`raw in-process SoftHSM2 encrypt (32 B): ${raw.opsPerSecond} ops/s on one core\n`);
    const closed = (requests: PreparedRequest[], ms: number) =>
      useWrk ? wrkClosedLoop({ port: target.port, host: t.host, requests, connections, threads: 1, durationMs: ms }) : closedLoop({ origin, ca, requests, connections, durationMs: ms });
    // Warm-up, not recorded: JIT, session pool, key handles. Without it the first workload (the
    // headline encrypt32) measured 10-25% below the others.
    await closed(await prepare(t, 'encrypt32', 1000, encryptVia), 3000);
    for (const w of workloads) {
      const requests = await prepare(t, w, 4000, encryptVia);
      let rss = 0;
      const sampler = setTimeout(() => (rss = target.rssMiB()), durationMs / 2);
      const result = await closed(requests, durationMs);
      clearTimeout(sampler);
      results.push({ workload: w, description: WORKLOADS[w], result, rssMiBUnderLoad: rss });
      process.stderr.write(`${w}: ${result.rps} req/s, p99 ${result.latencyMs.p99} ms, errors ${JSON.stringify(result.errors)}\n`);
    }
    if (useWrk) {
      // Right after encrypt32 (the machine's load drifts), with the same client and connections;
      // the proxy is idle meanwhile.
      ceilingHsm = (await measureCeiling({ durationMs, connections, processes: [1], proxy: false, layers: ['hsm'] }))[0];
      process.stderr.write(`ceiling, hsm layer: ${ceilingHsm?.okRps} req/s\n`);
    }
    const rateRequests = await prepare(t, 'encrypt32', 4000, encryptVia);
    const logFrom = fileSize(target.requestLogFile);
    rateResult = await rawOpenLoop({ port: target.port, host: t.host, ca, requests: rateRequests, connections, durationMs, rate: Number(values.rate) });
    // What the proxy itself adds, from its request log: the client-side figure also holds the
    // Node generator's own delays, as it shares the 2 cores with the proxy.
    rateServerSide = serverLatency(target.requestLogFile, logFrom);
    process.stderr.write(`encrypt32 at an offered ${values.rate} req/s: p99 ${rateResult.latencyMs.p99} ms, errors ${JSON.stringify(rateResult.errors)}\n`);
    const capacity = results.find((r) => r.workload === 'encrypt32')?.result.rps;
    if (capacity && Number(values['overload-factor']) > 0) {
      // Beyond capacity: what KMS would see at a multiple of what the proxy can serve.
      const offered = Math.round(capacity * Number(values['overload-factor']));
      // Enough connections that the excess reaches the proxy (as from KMS's many hosts) instead of
      // queueing inside the generator.
      overloadResult = await rawOpenLoop({ port: target.port, host: t.host, ca, requests: rateRequests, connections: 512, durationMs, rate: offered });
      process.stderr.write(`encrypt32 at ${values['overload-factor']}x capacity (${offered} req/s offered): ${overloadResult.ok} ok, errors ${JSON.stringify(overloadResult.errors)}, p99 ${overloadResult.latencyMs.p99} ms\n`);
    }
  } finally {
    await setupPool.close();
    await target.stop();
  }
  const network = await networkHsmRun({ holdMs: 2, callMode: 'async', rate: Number(values.rate), durationMs, connections: 64 });
  process.stderr.write(`encrypt32 at ${values.rate}/s, network HSM 2 ms (async): ${network.servedRps}/s served, p99 ${network.p99Ms} ms\n`);

  const enc = results.find((r) => r.workload === 'encrypt32');
  const report = {
    version: VERSION,
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, memGiB: Math.round(os.totalmem() / 2 ** 30) },
    generator: `${useWrk ? 'wrk' : 'undici'} (closed loop), raw TLS (fixed rate)`,
    workers: Number(values.workers),
    hsmCallMode: values['hsm-call-mode'],
    durationS: durationMs / 1000,
    connections,
    rawSoftHsmEncryptOpsPerSecond: raw?.opsPerSecond,
    proxyToRawRatio: enc && raw ? Math.round((enc.result.rps / raw.opsPerSecond) * 100) / 100 : undefined,
    rssMiB: { idle: rssIdle, underLoad: Math.max(0, ...results.map((r) => r.rssMiBUnderLoad)) },
    workloads: results,
    fixedRate: rateResult,
    fixedRateServerSideLatencyMs: rateServerSide,
    overload: overloadResult,
    ceilingHsmLayer: ceilingHsm,
    // Served (200) per second on both sides: under load the proxy sheds with 429.
    proxyToCeilingRatio: enc && ceilingHsm ? Math.round((enc.result.ok / enc.result.durationS / ceilingHsm.okRps) * 100) / 100 : undefined,
    networkHsm2ms: network,
    loadavg: os.loadavg(),
  };
  const out = values.out ?? path.join('bench', 'results', `bench-${report.date.replace(/[:.]/g, '-')}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(report, null, 2) + '\n');

  const row = (cols: (string | number)[]) => cols.map((c, i) => String(c).padEnd(i === 0 ? 16 : 11)).join('');
  console.log(`\nxks-proxy ${VERSION} on ${report.machine.cpus} cores (${report.machine.model}), ${report.generator}, ${connections} connections, ${durationMs / 1000} s each\n`);
  console.log(row(['workload', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'errors']));
  for (const r of results) {
    const e = Object.values(r.result.errors).reduce((a, b) => a + b, 0);
    console.log(row([r.workload, r.result.rps, r.result.latencyMs.p50, r.result.latencyMs.p90, r.result.latencyMs.p99, r.result.latencyMs.max, e]));
  }
  if (rateResult) {
    const e = Object.values(rateResult.errors).reduce((a, b) => a + b, 0);
    console.log(row([`@${rateResult.offeredRps}/s enc32`, rateResult.rps, rateResult.latencyMs.p50, rateResult.latencyMs.p90, rateResult.latencyMs.p99, rateResult.latencyMs.max, e]));
  }
  if (rateServerSide) console.log(`  @${rateResult?.offeredRps}/s, server side (request log): p50 ${rateServerSide.p50} ms, p99 ${rateServerSide.p99} ms, max ${rateServerSide.max} ms over ${rateServerSide.requests} requests`);
  if (overloadResult) {
    const e = Object.values(overloadResult.errors).reduce((a, b) => a + b, 0);
    console.log(row([`@${overloadResult.offeredRps}/s (x${values['overload-factor']})`, overloadResult.rps, overloadResult.latencyMs.p50, overloadResult.latencyMs.p90, overloadResult.latencyMs.p99, overloadResult.latencyMs.max, e]));
    console.log(`  beyond capacity: ${overloadResult.ok} served (p50 ${overloadResult.okLatencyMs?.p50} ms, p99 ${overloadResult.okLatencyMs?.p99} ms), ${JSON.stringify(overloadResult.errors)}`);
  }
  console.log(`\nraw SoftHSM2 encrypt, one core in-process: ${raw?.opsPerSecond} ops/s; proxy/raw (encrypt32): ${report.proxyToRawRatio}`);
  console.log(`proxy RSS: ${report.rssMiB.idle} MiB idle, ${report.rssMiB.underLoad} MiB under load`);
  if (ceilingHsm) console.log(`ceiling (hsm layer: TLS + SigV4 + SoftHSM2 only, 1 process, same client): ${ceilingHsm.okRps} req/s; proxy/ceiling ${report.proxyToCeilingRatio}`);
  console.log(`encrypt32 at ${values.rate}/s against an emulated network HSM at 2 ms per call (async, example settings, ${network.workers} worker(s)): ${network.servedRps}/s served, p50 ${network.p50Ms} ms, p99 ${network.p99Ms} ms`);
  console.log(`results: ${out}`);
  const load = os.loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(
    `\nSUMMARY encrypt32 ${enc ? Math.round(enc.result.ok / enc.result.durationS) : '-'} req/s served | proxy/ceiling ${report.proxyToCeilingRatio ?? '- (no wrk)'} | p99 @${values.rate}/s ${rateResult?.latencyMs.p99 ?? '-'} ms | p99 @${values.rate}/s HSM 2 ms ${network.p99Ms} ms (${network.servedRps}/s served, ${network.workers} worker${network.workers > 1 ? 's' : ''}) | RSS ${report.rssMiB.idle}/${report.rssMiB.underLoad} MiB idle/load | workers ${values.workers} | load avg ${load}`,
  );
}

if (!ceilingWorkerMain()) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
