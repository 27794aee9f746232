/**
 * Fault script (issue 9, item 2): a real proxy (`xks-proxy serve`, bench/lib/setup.ts) on a fresh
 * SoftHSM2 token; signed Encrypt, Decrypt and GetKeyMetadata calls run in a loop while the
 * token's files are moved away for --outage-s seconds and put back. Prints, per operation, the
 * answers by errorName during the outage and after the files are back, and the time from the files
 * being back to the first 200 (and to /healthz/ready answering 200). Asserts nothing.
 *
 *   npm run build && node dist/bench/fault-token-outage.js [--outage-s 20] [--after-s 10]
 *        [--scope tokendir|token]
 *
 * --scope tokendir moves SoftHSM2's whole token directory (directories.tokendir: C_Initialize then
 * fails); --scope token moves only this token's folder inside it (the token is then not listed).
 * Only the bench's own temporary token directory is touched.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { signedHeaders } from '../test/helpers/signer';
import { BENCH_KEY, KEY_STORE_PREFIX, startTarget } from './lib/setup';

type Op = 'encrypt' | 'decrypt' | 'metadata';
interface Answer {
  op: Op;
  sentAt: number;
  doneAt: number;
  status: number;
  errorName: string;
}

const META = { awsPrincipalArn: 'arn:aws:iam::123456789012:role/bench', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/bench' };

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'outage-s': { type: 'string', default: '20' },
      'after-s': { type: 'string', default: '10' },
      scope: { type: 'string', default: 'tokendir' },
    },
  });
  const outageMs = Number(values['outage-s']) * 1000;
  const afterMs = Number(values['after-s']) * 1000;
  const scope = values.scope === 'token' ? 'token' : 'tokendir';

  const target = await startTarget();
  const agent = new https.Agent({ keepAlive: true, ca: fs.readFileSync(target.certFile) });
  const host = `localhost:${target.port}`;
  const base = `${KEY_STORE_PREFIX}/kms/xks/v1/keys/${BENCH_KEY}`;

  function post(urlPath: string, body: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = https.request({ host: 'localhost', port: target.port, path: urlPath, method: 'POST', headers, agent }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  async function call(op: Op, extra: Record<string, unknown>): Promise<{ status: number; json: any }> {
    const urlPath = `${base}/${op}`;
    const kmsOperation = op === 'metadata' ? 'DescribeKey' : op === 'encrypt' ? 'Encrypt' : 'Decrypt';
    const body = JSON.stringify({ requestMetadata: { ...META, kmsOperation, kmsRequestId: crypto.randomUUID() }, ...extra });
    const headers = await signedHeaders({ host, path: urlPath, body, accessKeyId: target.cred.accessKeyId, secret: target.cred.secret });
    const r = await post(urlPath, body, headers);
    let json: any = {};
    try {
      json = JSON.parse(r.text);
    } catch {
      /* not JSON */
    }
    return { status: r.status, json };
  }

  const encryptBody = { plaintext: crypto.randomBytes(32).toString('base64'), encryptionAlgorithm: 'AES_GCM' };
  const sample = await call('encrypt', encryptBody);
  if (sample.status !== 200) throw new Error(`warm-up encrypt answered ${sample.status}`);
  const decryptBody = { ciphertext: sample.json.ciphertext, initializationVector: sample.json.initializationVector, authenticationTag: sample.json.authenticationTag, encryptionAlgorithm: 'AES_GCM' };
  const bodies: Record<Op, Record<string, unknown>> = { encrypt: encryptBody, decrypt: decryptBody, metadata: {} };

  const answers: Answer[] = [];
  const ready: { at: number; status: number }[] = [];
  let running = true;
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const loops = (['encrypt', 'decrypt', 'metadata'] as Op[]).map(async (op) => {
    while (running) {
      const sentAt = Date.now();
      try {
        const r = await call(op, bodies[op]);
        answers.push({ op, sentAt, doneAt: Date.now(), status: r.status, errorName: r.status === 200 ? 'OK' : String(r.json.errorName ?? r.status) });
      } catch (e) {
        answers.push({ op, sentAt, doneAt: Date.now(), status: 0, errorName: `network: ${(e as Error).message}` });
      }
      await pause(10);
    }
  });
  const readiness = (async () => {
    while (running) {
      const status = await new Promise<number>((resolve) => {
        https.get({ host: 'localhost', port: target.port, path: '/healthz/ready', agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        }).on('error', () => resolve(0));
      });
      ready.push({ at: Date.now(), status });
      await pause(20);
    }
  })();

  // The token's files: the whole token directory, or this token's folder inside it.
  const conf = fs.readFileSync(target.token.confPath, 'utf8');
  const tokenDir = /directories\.tokendir\s*=\s*(.+)/.exec(conf)![1]!.trim();
  const moved = scope === 'tokendir' ? tokenDir : path.join(tokenDir, fs.readdirSync(tokenDir).find((d) => fs.existsSync(path.join(tokenDir, d, 'token.object')))!);
  // Outside the token directory: SoftHSM2 takes every folder in it for a token, whatever its name.
  const away = path.join(path.dirname(tokenDir), `${path.basename(moved)}.away`);

  await pause(2000);
  const goneAt = Date.now();
  fs.renameSync(moved, away);
  await pause(outageMs);
  const backAt = Date.now();
  fs.renameSync(away, moved);
  await pause(afterMs);
  running = false;
  await Promise.all([...loops, readiness]);
  agent.destroy();
  await target.stop();

  const count = (xs: Answer[]) => xs.reduce<Record<string, number>>((m, a) => ((m[a.errorName] = (m[a.errorName] ?? 0) + 1), m), {});
  const report: Record<string, unknown> = { scope, outageSeconds: outageMs / 1000, afterSeconds: afterMs / 1000 };
  for (const op of ['encrypt', 'decrypt', 'metadata'] as Op[]) {
    const mine = answers.filter((a) => a.op === op);
    const firstOk = mine.find((a) => a.sentAt >= backAt && a.status === 200);
    report[op] = {
      duringOutage: count(mine.filter((a) => a.sentAt >= goneAt && a.doneAt < backAt)),
      afterBack: count(mine.filter((a) => a.sentAt >= backAt)),
      msFromBackToFirst200: firstOk ? firstOk.doneAt - backAt : null,
    };
  }
  const readyOk = ready.find((r) => r.at >= backAt && r.status === 200);
  report.readiness = {
    duringOutage: ready.filter((r) => r.at >= goneAt && r.at < backAt).reduce<Record<number, number>>((m, r) => ((m[r.status] = (m[r.status] ?? 0) + 1), m), {}),
    msFromBackToFirst200: readyOk ? readyOk.at - backAt : null,
  };
  console.log(JSON.stringify(report, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
