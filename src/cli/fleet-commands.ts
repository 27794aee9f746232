/**
 * Fleet mode from the command line (docs/fleet.md), straight against etcd with the config's
 * control.etcd settings (so they work when no member's admin API answers):
 *   fleet status                  members, versions, applied revision, health, confirmation
 *   control migrate --to etcd     copy the file store's verified state into a fresh etcd prefix
 *   control migrate --to file     copy the fleet's verified state into the file store
 * Both migrations verify the state with the HSM's MAC key first and keep every block, approval and
 * policy; the copy is written as the next generation of the target store (re-authenticated).
 */
import { parseArgs } from 'node:util';
import { configPathFrom, loadConfig, type LoadedConfig } from '../config/load';
import { readSecret } from '../config/secrets';
import { connectEtcd, normalisePrefix } from '../control/etcd-client';
import { EtcdControlStore } from '../control/etcd-store';
import type { MemberRecord } from '../control/fleet';
import { hsmStateAuthenticator } from '../control/state-auth';
import { StateStore, type ReadResult } from '../control/state-store';
import { openPkcs11Backend } from '../hsm/pkcs11-backend';
import { createSilentLogger } from '../log/logger';

export const FLEET_USAGE = `Usage:
  xks-proxy fleet status [--json] [--config FILE]

status: the live members of the fleet (control.etcd.prefix): node id, version, address, start
        time, the control revision each has applied against the fleet's current one, its
        staleness (ms since it last confirmed the control state with a quorum read; it fails closed
        past control.etcd.maxStalenessMs), its last deep health check, and whether it refuses calls
        because it cannot confirm the control state.
        Reads etcd directly (control.etcd of the config); no admin API needed.`;

export const CONTROL_MIGRATE_USAGE = `Usage:
  xks-proxy control migrate --to etcd|file --confirm [--config FILE]

Copies the control state (blocks, pending approvals, policies, history) between the file store
(control.stateDir) and the fleet's etcd prefix (control.etcd); the config needs both. The source is
verified with the HSM's MAC key first; the target must be fresh (no state yet): a fleet that already
has a state is never overwritten. Stop the proxies that use the source first, then switch
control.store and start them.`;

async function withHsm<T>(loaded: LoadedConfig, fn: (auth: ReturnType<typeof hsmStateAuthenticator>) => Promise<T>): Promise<T> {
  const c = loaded.config.control!;
  const hsm = await openPkcs11Backend({ ...loaded.config.hsm, pool: { ...loaded.config.hsm.pool, size: 1 } }, readSecret(loaded.config.hsm.pin), createSilentLogger());
  try {
    return await fn(hsmStateAuthenticator(hsm, c.stateAuth));
  } finally {
    await hsm.close();
  }
}

function etcdOf(loaded: LoadedConfig) {
  const e = loaded.config.control?.etcd;
  if (!e) throw new Error(`${loaded.file} has no control.etcd section`);
  return e;
}

function describe(r: ReadResult): string {
  return r.ok ? `generation ${r.state.generation}` : r.fresh ? 'fresh (no state)' : r.reason;
}

/**
 * Milliseconds since the member last confirmed the control state (its record's confirmedAt, by its
 * clock, against this host's: the hosts' clocks must agree, as SigV4 needs anyway); null for a
 * member that does not publish it (an older version).
 */
function stalenessOf(m: MemberRecord, now: number): number | null {
  const at = m.confirmedAt === undefined ? NaN : Date.parse(m.confirmedAt);
  return Number.isNaN(at) ? null : Math.max(0, now - at);
}

export async function fleetCommand(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help || positionals[0] !== 'status') {
    (values.help ? out : err).write(FLEET_USAGE + '\n');
    return values.help ? 0 : 2;
  }
  const loaded = loadConfig(configPathFrom(values.config));
  const e = etcdOf(loaded);
  const prefix = normalisePrefix(e.prefix);
  const client = connectEtcd(e);
  try {
    const [members, state] = await Promise.all([client.getAll().prefix(`${prefix}members/`).strings(), client.get(`${prefix}control/state`).exec()]);
    const kv = state.kvs[0];
    const current = kv ? Number(kv.mod_revision) : 0;
    const generation = kv ? ((JSON.parse(kv.value.toString()) as { generation?: number }).generation ?? null) : null;
    const now = Date.now();
    const list = Object.values(members)
      .map((v) => JSON.parse(v) as MemberRecord)
      .sort((a, b) => a.nodeId.localeCompare(b.nodeId))
      .map((m) => ({ ...m, behind: m.appliedRevision < current, stalenessMs: stalenessOf(m, now) }));
    if (values.json) {
      out.write(JSON.stringify({ prefix, controlRevision: current, generation, members: list }, null, 2) + '\n');
      return 0;
    }
    // With server.workers > 1 a proxy is several members (its primary and each worker, `<id>#w<N>`).
    const proxies = new Set(list.map((m) => m.proxy ?? m.nodeId)).size;
    out.write(`fleet ${prefix}: control revision ${current} (generation ${generation ?? '-'}), ${list.length} live member(s) of ${proxies} prox${proxies === 1 ? 'y' : 'ies'}\n`);
    for (const m of list) {
      const lag = m.behind ? `BEHIND (applied ${m.appliedRevision})` : 'up to date';
      out.write(`  ${m.nodeId}  v${m.version}  ${m.address}  started ${m.startedAt}  ${lag}  staleness ${m.stalenessMs === null ? '-' : `${m.stalenessMs} ms`}  health ${m.health}${m.stale ? '  REFUSING (state unconfirmed or untrusted)' : ''}  updated ${m.updatedAt}\n`);
    }
    return 0;
  } finally {
    client.close();
  }
}

export async function controlCommand(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: 'string' }, to: { type: 'string' }, confirm: { type: 'boolean' }, help: { type: 'boolean' } } });
  const bad = (msg: string) => {
    err.write(`error: ${msg}\n\n${CONTROL_MIGRATE_USAGE}\n`);
    return 2;
  };
  if (values.help) {
    out.write(CONTROL_MIGRATE_USAGE + '\n');
    return 0;
  }
  if (positionals[0] !== 'migrate') return bad('a subcommand is required: migrate');
  if (values.to !== 'etcd' && values.to !== 'file') return bad('--to etcd|file is required');
  if (!values.confirm) return bad('--confirm is required');
  const loaded = loadConfig(configPathFrom(values.config));
  const c = loaded.config.control;
  if (!c?.stateDir) return bad(`${loaded.file} has no control.stateDir (the file store)`);
  const e = etcdOf(loaded);
  const stateDir = c.stateDir;
  const client = connectEtcd(e);
  try {
    return await withHsm(loaded, async (auth) => {
      const file = new StateStore(stateDir, auth);
      const fleet = new EtcdControlStore(client, auth, { prefix: normalisePrefix(e.prefix), maxStalenessMs: e.maxStalenessMs, keepLastKnownMs: e.keepLastKnownMs, log: createSilentLogger() });
      const [from, to] = values.to === 'etcd' ? [file, fleet] : [fleet, file];
      const src = await from.read();
      if (!src.ok) {
        err.write(`error: the source state is not usable: ${describe(src)}\n`);
        return 1;
      }
      const dst = await to.read();
      if (dst.ok || !dst.fresh) {
        err.write(`error: the target already holds a state (${describe(dst)}); it is never overwritten\n`);
        return 1;
      }
      if (to === file) file.ensureDir();
      const { state } = await to.mutate(() => ({ body: src.state.body, result: undefined }), Date.now);
      out.write(`copied the control state (generation ${src.state.generation}: ${src.state.body.blocks.length} block(s), ${Object.keys(src.state.body.policies).length} policy(ies)) to ${values.to === 'etcd' ? `etcd prefix ${normalisePrefix(e.prefix)}` : stateDir} as generation ${state.generation}; set control.store: ${values.to} and start the proxies\n`);
      return 0;
    });
  } finally {
    client.close();
  }
}
