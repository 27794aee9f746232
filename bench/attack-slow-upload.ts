/**
 * Slow-upload attack against the proxy (issue 9, item 1), with figures. Asserts nothing.
 *
 * An attacker process opens N TLS connections from 127.0.0.2 (another loopback source address, so
 * that a per-peer bound is tested honestly; --sources K spreads them over 127.0.0.2 .. 127.0.0.K+1,
 * a distributed attacker that the per-peer bound does not stop), sends the headers of a POST to the Encrypt URI with
 * no credentials, then one body byte per second; whenever the proxy answers or closes one, it
 * reconnects after --reconnect-ms. Meanwhile this process sends signed Encrypts from 127.0.0.1 at
 * --rate per second for --seconds, and prints how many were served or refused, and their latency.
 *
 *   npm run build && node dist/bench/attack-slow-upload.js [--connections 300] [--seconds 30]
 *        [--rate 10] [--reconnect-ms 1000] [--warmup-seconds 5] [--sources 1]
 *   (against a running proxy instead of a fresh one on a temp SoftHSM2 token:
 *        --port 8443 --ca data/tls/cert.pem --kms-config data/kms-proxy-config-demo.json
 *        --prefix /demo --key demo-key-1)
 *
 * Loopback only, bounded: at most 2000 connections and 300 seconds.
 */
import { fork, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { signedHeaders } from '../test/helpers/signer';
import { BENCH_KEY, KEY_STORE_PREFIX, startTarget } from './lib/setup';

/** The attacker's i-th source address: 127.0.0.2 onwards. */
const attackerAddress = (i: number, sources: number) => `127.0.0.${2 + (i % sources)}`;
const CALLER_ADDRESS = '127.0.0.1';

interface AttackStats {
  opened: number;
  /** Connections that got a final answer, by status. */
  answered: Record<string, number>;
  /** Connections closed by the proxy without an answer. */
  closedSilently: number;
  /** Most connections open at once. */
  maxOpen: number;
}

/** The attacker, in a child process of its own so that its TLS work does not delay the measurements. */
function runAttacker(port: number, connections: number, sources: number, reconnectMs: number, path: string): void {
  const stats: AttackStats = { opened: 0, answered: {}, closedSilently: 0, maxOpen: 0 };
  let open = 0;
  let stopping = false;
  const sockets = new Set<tls.TLSSocket>();
  const connect = (i: number): void => {
    if (stopping) return;
    // localAddress reaches net.Socket#connect; the tls typings just do not list it.
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...({ localAddress: attackerAddress(i, sources) } as tls.ConnectionOptions) });
    sockets.add(s);
    let answered = false;
    let connected = false;
    let timer: NodeJS.Timeout | undefined;
    s.on('secureConnect', () => {
      connected = true;
      stats.opened++;
      open++;
      stats.maxOpen = Math.max(stats.maxOpen, open);
      s.write(`POST ${path} HTTP/1.1\r\nHost: localhost:${port}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n`);
      timer = setInterval(() => s.write('a'), 1000);
    });
    let head = '';
    s.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
      if (m && m[1] !== '100' && !answered) {
        answered = true;
        stats.answered[m[1]!] = (stats.answered[m[1]!] ?? 0) + 1;
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      if (timer) clearInterval(timer);
      sockets.delete(s);
      if (connected) open--;
      if (connected && !answered) stats.closedSilently++;
      setTimeout(() => connect(i), reconnectMs);
    });
  };
  for (let i = 0; i < connections; i++) connect(i);
  process.on('message', (m) => {
    if (m !== 'stop') return;
    stopping = true;
    for (const s of sockets) s.destroy();
    process.send!(stats, () => process.exit(0));
  });
}

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! * 10) / 10;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string', default: 'measure' },
      connections: { type: 'string', default: '300' },
      seconds: { type: 'string', default: '30' },
      'warmup-seconds': { type: 'string', default: '5' },
      rate: { type: 'string', default: '10' },
      'reconnect-ms': { type: 'string', default: '1000' },
      sources: { type: 'string', default: '1' },
      port: { type: 'string' },
      ca: { type: 'string' },
      'kms-config': { type: 'string' },
      prefix: { type: 'string', default: KEY_STORE_PREFIX },
      key: { type: 'string', default: BENCH_KEY },
      'target-port': { type: 'string' },
      path: { type: 'string' },
    },
  });
  const connections = Math.min(2000, Math.max(1, Number(values.connections)));
  const sources = Math.min(250, Math.max(1, Number(values.sources)));
  if (values.role === 'attacker') {
    runAttacker(Number(values['target-port']), connections, sources, Number(values['reconnect-ms']), values.path!);
    return;
  }
  const seconds = Math.min(300, Math.max(1, Number(values.seconds)));
  const warmup = Math.min(60, Math.max(0, Number(values['warmup-seconds'])));
  const rate = Math.min(1000, Math.max(0.1, Number(values.rate)));

  let port: number;
  let ca: Buffer;
  let cred: { accessKeyId: string; secret: string };
  let stop = async () => undefined as void;
  if (values.port) {
    port = Number(values.port);
    ca = fs.readFileSync(values.ca!);
    const kms = JSON.parse(fs.readFileSync(values['kms-config']!, 'utf8'));
    cred = { accessKeyId: kms.XksProxyAuthenticationCredential.AccessKeyId, secret: kms.XksProxyAuthenticationCredential.RawSecretAccessKey };
  } else {
    const t = await startTarget();
    port = t.port;
    ca = fs.readFileSync(t.certFile);
    cred = t.cred;
    stop = () => t.stop();
  }
  const path = `${values.prefix}/kms/xks/v1/keys/${values.key}/encrypt`;
  const agent = new https.Agent({ keepAlive: true, ca, localAddress: CALLER_ADDRESS });

  const encrypt = async (): Promise<{ status: number; ms: number; error?: string }> => {
    const body = JSON.stringify({
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:role/bench', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/bench', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() },
      plaintext: crypto.randomBytes(32).toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    const headers = await signedHeaders({ host: `localhost:${port}`, path, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
    const t0 = performance.now();
    return new Promise((resolve) => {
      const req = https.request({ host: '127.0.0.1', servername: 'localhost', port, path, method: 'POST', headers, agent }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => {
          const ms = performance.now() - t0;
          resolve(res.statusCode === 200 ? { status: 200, ms } : { status: res.statusCode ?? 0, ms, error: text.slice(0, 200) });
        });
      });
      req.on('error', () => resolve({ status: 0, ms: performance.now() - t0 }));
      req.end(body);
    });
  };

  // Before the attack: the proxy serves (and the connection pool is warm).
  const baseline = await encrypt();

  const attacker: ChildProcess = fork(__filename, ['--role', 'attacker', '--target-port', String(port), '--connections', String(connections), '--sources', String(sources), '--reconnect-ms', String(values['reconnect-ms']), '--path', path], { stdio: 'inherit' });
  await new Promise((r) => setTimeout(r, warmup * 1000)); // let the attack reach its full size

  const results: { status: number; ms: number; error?: string }[] = [];
  const pending: Promise<void>[] = [];
  const started = performance.now();
  for (let i = 0; performance.now() - started < seconds * 1000; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(encrypt().then((r) => void results.push(r)));
  }
  await Promise.all(pending);

  const attack = await new Promise<AttackStats>((resolve) => {
    attacker.once('message', (m) => resolve(m as AttackStats));
    attacker.send('stop');
  });
  agent.destroy();
  await stop();

  const byStatus: Record<string, number> = {};
  const errors: Record<string, number> = {};
  for (const r of results) {
    byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
    if (r.error !== undefined) errors[r.error] = (errors[r.error] ?? 0) + 1;
  }
  const served = results.filter((r) => r.status === 200).map((r) => r.ms).sort((a, b) => a - b);
  const all = results.map((r) => r.ms).sort((a, b) => a - b);
  console.log(
    JSON.stringify(
      {
        attack: { connections, from: sources === 1 ? attackerAddress(0, 1) : `${attackerAddress(0, sources)} .. ${attackerAddress(sources - 1, sources)}`, bodyBytePerSecond: 1, reconnectMs: Number(values['reconnect-ms']), ...attack },
        signedEncrypts: {
          from: CALLER_ADDRESS,
          ratePerSecond: rate,
          seconds,
          baselineStatus: baseline.status,
          sent: results.length,
          served: byStatus['200'] ?? 0,
          refused429: byStatus['429'] ?? 0,
          byStatus,
          errors,
          servedP50ms: percentile(served, 0.5),
          servedP99ms: percentile(served, 0.99),
          allP50ms: percentile(all, 0.5),
          allP99ms: percentile(all, 0.99),
        },
      },
      null,
      2,
    ),
  );
}

void main();
