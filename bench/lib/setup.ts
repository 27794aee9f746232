/**
 * A self-contained benchmark target: a fresh SoftHSM2 token with its keys, a TLS certificate, a
 * SigV4 credential and a config file in a temp folder, and the real proxy started as a child
 * process (`xks-proxy serve`), as it runs in production.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import type { HsmConfig } from '../../src/config/schema';
import { makeTlsCert, writeCredential, type Credential } from '../../test/helpers/proxy-harness';
import { spawnServe } from '../../test/helpers/serve-process';
import { createTestToken, type TestToken } from '../../test/helpers/softhsm-token';

export const BENCH_KEY = 'bench-key';
export const KEY_STORE_PREFIX = '/bench';

export interface BenchTarget {
  port: number;
  cred: Credential;
  certFile: string;
  hsmConfig: HsmConfig;
  pin: string;
  pid: number;
  /** The proxy's request log: one JSON line per request with its server-side latencyMs. */
  requestLogFile: string;
  /** Resident set size of the proxy process(es), in MiB, from /proc. */
  rssMiB(): number;
  stop(): Promise<void>;
}

export interface TargetOptions {
  /** Extra YAML lines appended to the generated config (e.g. tuning under test). */
  extraConfig?: string[];
  env?: NodeJS.ProcessEnv;
  /** Node options for the proxy process, e.g. ['--cpu-prof']. */
  nodeArgs?: string[];
  /** server.workers: worker processes of the proxy (node:cluster). */
  workers?: number;
  /** Runs on the fresh token before the proxy starts (e.g. to create the control state's MAC key). */
  prepareToken?: (token: TestToken) => Promise<void>;
  /**
   * The PKCS#11 module the proxy loads instead of SoftHSM2 itself (e.g. the emulated network HSM,
   * latency-shim.ts), its extra environment, and extra lines of the hsm section (e.g. pool size).
   */
  hsm?: { module: (softhsm: string) => string; moduleEnv: (softhsm: string) => Record<string, string>; lines?: string[] };
}

export async function startTarget(opts: TargetOptions = {}): Promise<BenchTarget & { token: TestToken }> {
  const token = createTestToken();
  await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
  await createKey(token.hsmConfig, token.pin, { label: BENCH_KEY, usage: 'encrypt-decrypt' });
  await opts.prepareToken?.(token);
  const { certFile, keyFile } = makeTlsCert(token.dir);
  const cred = writeCredential(path.join(token.dir, 'creds'));
  const configFile = path.join(token.dir, 'bench.yaml');
  fs.writeFileSync(
    configFile,
    [
      `server: { host: 127.0.0.1, port: 0, workers: ${opts.workers ?? 1}, tls: { certFile: ${JSON.stringify(certFile)}, keyFile: ${JSON.stringify(keyFile)} } }`,
      'hsm:',
      `  module: ${JSON.stringify(opts.hsm?.module(token.module) ?? token.module)}`,
      `  moduleEnv: ${JSON.stringify({ SOFTHSM2_CONF: token.confPath, ...(opts.hsm?.moduleEnv(token.module) ?? {}) })}`,
      ...(opts.hsm?.lines ?? []).map((l) => `  ${l}`),
      `  tokenLabel: ${token.tokenLabel}`,
      `  pin: { file: ${JSON.stringify(token.pinFile)} }`,
      'keyStores:',
      '  - name: bench',
      `    pathPrefix: ${KEY_STORE_PREFIX}`,
      '    credentialsDir: ./creds',
      `    keys: [{ externalKeyId: ${BENCH_KEY} }]`,
      `log: { level: info, requestLogStdout: false, requestLogFile: ${JSON.stringify(path.join(token.dir, 'requests.log'))} }`,
      ...(opts.extraConfig ?? []),
    ].join('\n'),
  );
  const spawned = spawnServe(configFile, { cluster: (opts.workers ?? 1) > 1, env: { ...process.env, ...(opts.env ?? {}) }, ...(opts.nodeArgs ? { nodeArgs: opts.nodeArgs } : {}), timeoutMs: 30_000 });
  const { child, port } = await spawned.catch((e: unknown) => {
    token.cleanup();
    throw e;
  });
  const pid = child.pid!;
  return {
    token,
    port,
    cred,
    certFile,
    hsmConfig: token.hsmConfig,
    pin: token.pin,
    pid,
    requestLogFile: path.join(token.dir, 'requests.log'),
    rssMiB: () => processTreeRssMiB(pid),
    async stop() {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
      token.cleanup();
    },
  };
}

/** A process and its direct children (cluster workers), from /proc. */
function processTree(pid: number): number[] {
  const pids = [pid];
  try {
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      const children = fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim();
      for (const c of children ? children.split(/\s+/) : []) pids.push(Number(c));
    }
  } catch {
    /* process gone */
  }
  return pids;
}

/** `read` of /proc/<pid>/<file>, 0 when the process is gone. */
function fromProc(p: number, file: string, read: (text: string) => number): number {
  try {
    return read(fs.readFileSync(`/proc/${p}/${file}`, 'utf8'));
  } catch {
    return 0;
  }
}

/** RSS of a process and its direct children (cluster workers), in MiB. */
export function processTreeRssMiB(pid: number): number {
  const total = processTree(pid).reduce((a, p) => a + fromProc(p, 'status', (t) => Number(/VmRSS:\s+(\d+) kB/.exec(t)?.[1] ?? 0) / 1024), 0);
  return Math.round(total * 10) / 10;
}

/** CPU time (user + system, seconds) used so far by a process and its direct children. */
export function processTreeCpuSeconds(pid: number): number {
  const tick = 100; // USER_HZ: 100 on Linux
  // Fields after the ")" of the command name: utime and stime are the 12th and 13th.
  const cpu = (t: string) => {
    const f = t.split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / tick;
  };
  return processTree(pid).reduce((a, p) => a + fromProc(p, 'stat', cpu), 0);
}

/** Server-side latency percentiles of the request-log lines written after byte `from`. */
export function serverLatency(requestLogFile: string, from: number): { requests: number; p50: number; p99: number; max: number } {
  const fd = fs.openSync(requestLogFile, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(size - from);
    fs.readSync(fd, buf, 0, buf.length, from);
    const ms = buf.toString('utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => (JSON.parse(l) as { latencyMs: number }).latencyMs).sort((a, b) => a - b);
    const q = (p: number) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))] ?? 0;
    return { requests: ms.length, p50: q(0.5), p99: q(0.99), max: ms[ms.length - 1] ?? 0 };
  } finally {
    fs.closeSync(fd);
  }
}

export function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}
