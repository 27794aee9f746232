/**
 * How long a fleet takes to serve again once the etcd quorum is back (docs/fleet.md, "Partitions
 * fail closed"). A real three-member etcd cluster on loopback ports and two real proxies (in this
 * process, one SoftHSM2 token, the default control.etcd settings unless given): each round kills two
 * etcd members, waits until both proxies fail closed, starts the two members again, and prints
 *
 *   etcd   ms until etcd answers a quorum read again (its own restart and leader election)
 *   A, B   ms until each proxy has confirmed the state and serves again (its 'reload' event)
 *   lag    the slower proxy's time minus etcd's: what the proxies add (client back-off, heartbeat)
 *
 * measured from the restart of the two members, and the medians at the end.
 *
 *   npm run build && node dist/bench/fleet-recovery.js [--rounds 5] [--max-staleness-ms 3000]
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import type { ControlPlane } from '../src/control/control-plane';
import { createKey } from '../src/hsm/key-admin';
import { startEtcdCluster, type EtcdCluster } from '../test/helpers/etcd-cluster';
import { startHarness, writeCredential, type Harness } from '../test/helpers/proxy-harness';
import { createTestToken } from '../test/helpers/softhsm-token';
import { createStateKey } from '../test/helpers/state-hsm';
import { waitEvent } from '../test/helpers/wait-event';

/** The time (ms since `t0()`) of the first event `ev` for which `pred` holds. */
function eventAt<T>(em: ControlPlane, ev: string, pred: (x: T) => boolean, t0: () => bigint, timeoutMs: number): Promise<number> {
  return waitEvent(em, ev, pred, timeoutMs).then(() => Number(process.hrtime.bigint() - t0()) / 1e6);
}

/**
 * Time (ms since `t0`) at which a quorum read through any member first answers (polled every 20 ms),
 * with a new client per attempt: a client's own back-off would measure itself, not etcd.
 */
async function etcdBackAt(etcd: EtcdCluster, t0: bigint): Promise<number> {
  for (;;) {
    const c = new Etcd3({ hosts: etcd.endpoints, dialTimeout: 300 });
    try {
      await c.get('bench-probe').options({ deadline: Date.now() + 300 }).exec();
      return Number(process.hrtime.bigint() - t0) / 1e6;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    } finally {
      c.close();
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, 'max-staleness-ms': { type: 'string' } } });
  const rounds = Number(values.rounds);
  const etcd = await startEtcdCluster(3);
  const token = createTestToken();
  const proxies: Harness[] = [];
  try {
    for (const label of ['xks-health', 'k1']) await createKey(token.hsmConfig, token.pin, { label, usage: 'encrypt-decrypt' });
    await createStateKey(token);
    const creds = path.join(token.dir, 'creds');
    writeCredential(creds);
    const prefix = `/bench-recovery/${crypto.randomBytes(4).toString('hex')}/`;
    const staleness = values['max-staleness-ms'] ? { maxStalenessMs: Number(values['max-staleness-ms']) } : {};
    for (const nodeId of ['A', 'B']) {
      proxies.push(
        await startHarness({
          hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
          keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: creds, keys: [{ externalKeyId: 'k1' }] }],
          control: { store: 'etcd', etcd: { endpoints: etcd.endpoints, prefix, nodeId, ...staleness } },
          log: { level: 'warn' },
        }),
      );
    }
    const cps = proxies.map((p) => p.proxy.control!);
    const rows: Array<{ etcd: number; A: number; B: number }> = [];
    console.log(`fleet recovery after the etcd quorum returns (${rounds} rounds, maxStalenessMs ${staleness.maxStalenessMs ?? 'default 3000'})`);
    for (let i = 0; i < rounds; i++) {
      const stale = Promise.all(cps.map((cp) => eventAt(cp, 'stale', () => true, () => 0n, 60_000)));
      await etcd.kill(1);
      await etcd.kill(2);
      await stale;
      let t0 = 0n;
      const back = Promise.all(cps.map((cp) => eventAt(cp, 'reload', (x: { failClosed?: string }) => x.failClosed === undefined, () => t0, 120_000)));
      t0 = process.hrtime.bigint();
      etcd.restart(1);
      etcd.restart(2);
      const [e, [a, b]] = await Promise.all([etcdBackAt(etcd, t0), back]);
      rows.push({ etcd: e, A: a!, B: b! });
      console.log(`  round ${i + 1}: etcd ${e.toFixed(0)} ms, A ${a!.toFixed(0)} ms, B ${b!.toFixed(0)} ms, lag ${(Math.max(a!, b!) - e).toFixed(0)} ms`);
    }
    const lags = rows.map((r) => Math.max(r.A, r.B) - r.etcd);
    console.log(`median: etcd ${median(rows.map((r) => r.etcd)).toFixed(0)} ms, A ${median(rows.map((r) => r.A)).toFixed(0)} ms, B ${median(rows.map((r) => r.B)).toFixed(0)} ms, lag ${median(lags).toFixed(0)} ms (max ${Math.max(...lags).toFixed(0)} ms)`);
  } finally {
    for (const p of proxies) await p.close();
    await etcd.stop();
    token.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
