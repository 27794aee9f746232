/**
 * What this machine and stack allow, layer by layer, for the encrypt32 workload: the same wrk
 * client and pre-signed requests as `npm run bench`, against minimal HTTPS servers that each add
 * one layer of the proxy's unavoidable work:
 *
 *   tls        Node HTTPS keep-alive, read the body, answer a fixed encrypt-shaped JSON
 *   sigv4      + full SigV4 verification (our verifier), JSON parse, base64 decode/encode
 *   hsm        + the AES-GCM encrypt through our PKCS#11 backend on a SoftHSM2 token
 *
 * each in 1 and in N processes (node:cluster). No policy, kill switch, logs or metrics: these
 * are upper bounds for the real proxy on the same box, not a product configuration. Then, in the
 * same run, the real proxy (`xks-proxy serve`, default settings, SoftHSM2) with the same client
 * and requests, and its ratio to the `hsm` layer.
 *
 *   npm run build && node dist/bench/ceiling.js [--duration 6] [--connections 64] [--workers 2]
 *        [--processes 1,2] [--layers tls,sigv4,hsm] [--no-proxy] [--rounds N]
 *
 * wrk must be installed (Debian package `wrk`).
 */
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import https from 'node:https';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { SigningKeyCache, verifySigV4 } from '../src/auth/sigv4';
import { createKey } from '../src/hsm/key-admin';
import { readRawBody } from '../src/http/body';
import { tlsOptions } from '../src/http/server';
import { openPkcs11Backend } from '../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../src/log/logger';
import { buildGcmAad } from '../src/xks/aad';
import { makeTlsCert, writeCredential, type Credential } from '../test/helpers/proxy-harness';
import { createTestToken, type TestToken } from '../test/helpers/softhsm-token';
import os from 'node:os';
import { wrkAvailable, wrkClosedLoop } from './lib/load-wrk';
import { processTreeCpuSeconds, startTarget } from './lib/setup';
import { prepare } from './lib/workloads';

type Layer = 'tls' | 'sigv4' | 'hsm';
const LAYERS: Layer[] = ['tls', 'sigv4', 'hsm'];
const KEY = 'bench-key';

interface WorkerSetup {
  layer: Layer;
  certFile: string;
  keyFile: string;
  cred: Credential;
  token: Pick<TestToken, 'hsmConfig' | 'pin'>;
}

async function serve(s: WorkerSetup, port: number): Promise<https.Server> {
  const hsm = s.layer === 'hsm' ? await openPkcs11Backend(s.token.hsmConfig, s.token.pin, createSilentLogger()) : undefined;
  const keyCache = new SigningKeyCache();
  const lookup = { secretFor: (id: string) => (id === s.cred.accessKeyId ? s.cred.secret : undefined) };
  const fixed = JSON.stringify({ authenticationTag: 'A'.repeat(24), ciphertext: 'B'.repeat(44), initializationVector: 'C'.repeat(16) });
  // The proxy's own ways of reading a body and writing an answer (src/http), so that a layer does
  // the same I/O work as the proxy and differs from it only by the features it leaves out.
  const server = https.createServer(tlsOptions({ certFile: s.certFile, keyFile: s.keyFile }), (req, res) => {
    const reply = (status: number, text: string) => {
      res.writeHead(status, ['Content-Type', 'application/json', 'Content-Length', String(Buffer.byteLength(text))]);
      res.end(text);
    };
    readRawBody(req, 300 * 1024).then((body) => {
      if (s.layer === 'tls') return reply(200, fixed);
      try {
        verifySigV4({ method: req.method ?? 'POST', url: req.url ?? '/', rawHeaders: req.rawHeaders, body }, lookup, { clockSkewSeconds: 300, now: Date.now() }, keyCache);
        const j = JSON.parse(body.toString('utf8')) as { plaintext: string; additionalAuthenticatedData: string };
        const plaintext = Buffer.from(j.plaintext, 'base64');
        const aad = buildGcmAad(Buffer.from(j.additionalAuthenticatedData, 'base64'), undefined);
        const done = (r: { ciphertext: Buffer; iv: Buffer; tag: Buffer }) =>
          reply(200, JSON.stringify({ authenticationTag: r.tag.toString('base64'), ciphertext: r.ciphertext.toString('base64'), initializationVector: r.iv.toString('base64') }));
        if (!hsm) return done({ ciphertext: plaintext, iv: crypto.randomBytes(12), tag: crypto.randomBytes(16) });
        hsm.encrypt(KEY, plaintext, aad).then(done, () => reply(500, '{}'));
      } catch {
        reply(400, '{}');
      }
    }, () => reply(400, '{}'));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return server;
}

export interface CeilingRow {
  layer: Layer | 'proxy';
  processes: number;
  rps: number;
  /** Answered 200 per second: the proxy sheds with 429 when the machine cannot keep up. */
  okRps: number;
  /**
   * CPU time of the server process(es) per answer, in microseconds: what each answer costs,
   * much less sensitive than the rate to other jobs taking the cores (a shared machine).
   */
  cpuUsPerAnswer: number;
  p50: number;
  p99: number;
  errors: number;
}

export async function measureCeiling(o: { durationMs: number; connections: number; processes: number[]; proxy: boolean; layers?: Layer[] }): Promise<CeilingRow[]> {
  if (!wrkAvailable()) throw new Error('wrk is not installed (apt-get install wrk)');
  const token = createTestToken();
  const rows: CeilingRow[] = [];
  const row = (r: CeilingRow) => {
    rows.push(r);
    process.stderr.write(`${formatCeilingRow(r)}\n`);
  };
  try {
    await createKey(token.hsmConfig, token.pin, { label: KEY, usage: 'encrypt-decrypt' });
    const { certFile, keyFile } = makeTlsCert(token.dir);
    const cred = writeCredential(path.join(token.dir, 'creds'));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const t = { host: `localhost:${port}`, prefix: '/bench', keyId: KEY, cred };
    const requests = await prepare(t, 'encrypt32', 4000, () => Promise.reject(new Error('not needed for encrypt32')));
    for (const layer of o.layers ?? LAYERS) {
      for (const n of o.processes) {
        const setup: WorkerSetup = { layer, certFile, keyFile, cred, token: { hsmConfig: token.hsmConfig, pin: token.pin } };
        const workers = Array.from({ length: n }, () => cluster.fork({ CEILING_SETUP: JSON.stringify({ ...setup, port }) }));
        await Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
        })));
        const cpu0 = workers.reduce((a, w) => a + processTreeCpuSeconds(w.process.pid!), 0);
        const r = await wrkClosedLoop({ port, host: t.host, requests, connections: o.connections, threads: 1, durationMs: o.durationMs });
        const cpuUs = (workers.reduce((a, w) => a + processTreeCpuSeconds(w.process.pid!), 0) - cpu0) * 1e6;
        await Promise.all(workers.map((w) => new Promise<void>((resolve) => {
          w.once('exit', () => resolve());
          w.kill();
        })));
        row({ layer, processes: n, rps: r.rps, okRps: Math.round(r.ok / r.durationS), cpuUsPerAnswer: Math.round(cpuUs / Math.max(1, r.requests)), p50: r.latencyMs.p50, p99: r.latencyMs.p99, errors: Object.values(r.errors).reduce((a, b) => a + b, 0) });
      }
    }
  } finally {
    token.cleanup();
  }
  if (o.proxy) {
    for (const n of o.processes) {
      // The product with its default settings (request log and metrics on), the same client and workload.
      const target = await startTarget({ workers: n });
      try {
        const t = { host: `localhost:${target.port}`, prefix: '/bench', keyId: KEY, cred: target.cred };
        const requests = await prepare(t, 'encrypt32', 4000, () => Promise.reject(new Error('not needed for encrypt32')));
        await wrkClosedLoop({ port: target.port, host: t.host, requests, connections: o.connections, threads: 1, durationMs: 2000 }); // warm-up
        const cpu0 = processTreeCpuSeconds(target.pid);
        const r = await wrkClosedLoop({ port: target.port, host: t.host, requests, connections: o.connections, threads: 1, durationMs: o.durationMs });
        const cpuUs = (processTreeCpuSeconds(target.pid) - cpu0) * 1e6;
        row({ layer: 'proxy', processes: n, rps: r.rps, okRps: Math.round(r.ok / r.durationS), cpuUsPerAnswer: Math.round(cpuUs / Math.max(1, r.requests)), p50: r.latencyMs.p50, p99: r.latencyMs.p99, errors: Object.values(r.errors).reduce((a, b) => a + b, 0) });
      } finally {
        await target.stop();
      }
    }
  }
  return rows;
}

function formatCeilingRow(r: CeilingRow): string {
  return `${r.layer.padEnd(8)}${String(r.processes).padEnd(11)}${String(r.okRps).padEnd(9)}${String(r.cpuUsPerAnswer).padEnd(12)}${String(r.p50).padEnd(9)}${String(r.p99).padEnd(9)}${r.errors}`;
}

/**
 * The `hsm` layer's CPU per answer over the real proxy's, same process count, same run: the rate
 * ratio the proxy would reach with the cores to itself (each answer is CPU-bound on both sides).
 */
export function proxyToCeilingByCpu(rows: CeilingRow[], processes = 1): number | undefined {
  const hsm = rows.find((r) => r.layer === 'hsm' && r.processes === processes);
  const proxy = rows.find((r) => r.layer === 'proxy' && r.processes === processes);
  return hsm && proxy && proxy.cpuUsPerAnswer > 0 ? Math.round((hsm.cpuUsPerAnswer / proxy.cpuUsPerAnswer) * 100) / 100 : undefined;
}

/** The real proxy's encrypt32 rate over the `hsm` layer's, same process count, same run. */
export function proxyToCeiling(rows: CeilingRow[], processes = 1): number | undefined {
  const hsm = rows.find((r) => r.layer === 'hsm' && r.processes === processes);
  const proxy = rows.find((r) => r.layer === 'proxy' && r.processes === processes);
  return hsm && proxy ? Math.round((proxy.okRps / hsm.okRps) * 100) / 100 : undefined;
}

async function primary(): Promise<void> {
  const { values } = parseArgs({ options: { duration: { type: 'string', default: '6' }, connections: { type: 'string', default: '64' }, workers: { type: 'string', default: '2' }, processes: { type: 'string' }, layers: { type: 'string' }, 'no-proxy': { type: 'boolean' }, rounds: { type: 'string', default: '1' } } });
  const processes = (values.processes ?? `1,${values.workers}`).split(',').map(Number);
  const layers = values.layers ? (values.layers.split(',') as Layer[]) : undefined;
  const rounds = Number(values.rounds);
  // Several rounds alternate the layers and the proxy, so that a change in the machine's load
  // (a shared machine) hits both sides of a ratio alike; the medians are what to quote.
  const perRound: CeilingRow[][] = [];
  for (let i = 0; i < rounds; i++) {
    perRound.push(await measureCeiling({ durationMs: Number(values.duration) * 1000, connections: Number(values.connections), processes, proxy: !values['no-proxy'], ...(layers ? { layers } : {}) }));
  }
  console.log(`\nceiling for encrypt32 on this machine (wrk, ${values.connections} connections, ${values.duration} s each, ${rounds} round${rounds > 1 ? 's' : ''}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')})\n`);
  console.log(`${rounds > 1 ? 'round ' : ''}layer   processes  ok/s     CPU us/ans  p50 ms   p99 ms   errors`);
  perRound.forEach((rows, i) => {
    for (const r of rows) console.log(`${rounds > 1 ? String(i + 1).padEnd(6) : ''}${formatCeilingRow(r)}`);
  });
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const n of processes) {
    const byRate = perRound.map((rows) => proxyToCeiling(rows, n)).filter((x): x is number => x !== undefined);
    const byCpu = perRound.map((rows) => proxyToCeilingByCpu(rows, n)).filter((x): x is number => x !== undefined);
    if (byRate.length === 0) continue;
    const each = rounds > 1 ? ` (rounds: ${byRate.join(', ')} by rate; ${byCpu.join(', ')} by CPU)` : '';
    console.log(`proxy / hsm layer, ${n} process${n > 1 ? 'es' : ''}: ${median(byRate)} by served rate, ${median(byCpu)} by CPU per answer${rounds > 1 ? ', medians' : ''}${each}`);
  }
}

async function worker(): Promise<void> {
  const setup = JSON.parse(process.env.CEILING_SETUP!) as WorkerSetup & { port: number };
  await serve(setup, setup.port);
  process.send!('listening');
}

/**
 * The layers' servers are forks of the script that runs (cluster): this file as a program, or
 * the benchmark that imported measureCeiling (bench/run.ts), which hands them over here.
 */
export function ceilingWorkerMain(): boolean {
  if (cluster.isPrimary || process.env.CEILING_SETUP === undefined) return false;
  worker().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
  return true;
}

if (require.main === module && !ceilingWorkerMain()) {
  primary().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
