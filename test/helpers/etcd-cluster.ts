/**
 * A real three-member etcd cluster (Debian's etcd-server, /usr/bin/etcd) on loopback ports, with
 * its data in a temporary folder: start, wait for health (bounded), kill and restart members,
 * clean up. Short heartbeat and election timeouts so that a lost leader is replaced quickly.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Etcd3 } from 'etcd3';

export const ETCD_BIN = process.env.ETCD_BIN ?? '/usr/bin/etcd';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  proc: ChildProcess | undefined;
}

export interface EtcdCluster {
  dir: string;
  members: EtcdMember[];
  endpoints: string[];
  /** SIGKILL one member and wait for it to exit. */
  kill(i: number): Promise<void>;
  /** Start a killed member again on its data folder. */
  restart(i: number): void;
  /** Waits (bounded) until a linearizable read through the given members answers. */
  waitHealthy(timeoutMs?: number, which?: number[]): Promise<void>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  srv.close();
  await once(srv, 'close');
  return port;
}

export async function startEtcdCluster(size = 3): Promise<EtcdCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-etcd-'));
  const members: EtcdMember[] = [];
  for (let i = 0; i < size; i++) members.push({ name: `m${i}`, clientUrl: `http://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}`, proc: undefined });
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  const launch = (i: number) => {
    const m = members[i]!;
    const args = [
      '--name', m.name,
      '--data-dir', path.join(dir, m.name),
      '--listen-client-urls', m.clientUrl,
      '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', m.peerUrl,
      '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', path.basename(dir),
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', '50',
      '--election-timeout', '500',
      '--log-level', 'error',
    ];
    const logFile = fs.openSync(path.join(dir, `${m.name}.log`), 'a');
    // ETCD_UNSUPPORTED_ARCH: harmless on amd64, needed on arm64 for 3.4.
    m.proc = spawn(ETCD_BIN, args, { stdio: ['ignore', logFile, logFile], env: { ...process.env, ETCD_UNSUPPORTED_ARCH: process.arch === 'arm64' ? 'arm64' : '' } });
    fs.closeSync(logFile);
  };
  members.forEach((_, i) => launch(i));
  const cluster: EtcdCluster = {
    dir,
    members,
    endpoints: members.map((m) => m.clientUrl),
    async kill(i) {
      const p = members[i]!.proc;
      members[i]!.proc = undefined;
      if (!p || p.exitCode !== null) return;
      const exited = once(p, 'exit');
      p.kill('SIGKILL');
      await exited;
    },
    restart(i) {
      if (members[i]!.proc) throw new Error(`etcd member ${i} is running`);
      launch(i);
    },
    async waitHealthy(timeoutMs = 15_000, which) {
      const hosts = (which ?? members.map((_, i) => i)).map((i) => members[i]!.clientUrl);
      const deadline = Date.now() + timeoutMs;
      let last = 'no attempt';
      while (Date.now() < deadline) {
        const c = new Etcd3({ hosts, dialTimeout: 1000 });
        try {
          await c.get('health-probe').options({ deadline: Date.now() + 1000 }).exec();
          return;
        } catch (e) {
          last = (e as Error).message;
        } finally {
          c.close();
        }
        // Bounded poll between attempts (etcd has no readiness event to wait on).
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`etcd cluster not healthy within ${timeoutMs} ms: ${last}; logs in ${dir}`);
    },
    async stop() {
      for (let i = 0; i < members.length; i++) await cluster.kill(i);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await cluster.waitHealthy();
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}
