/**
 * Builds the control plane and the admin listener from the `control` config section, for the
 * composition root (main.ts, and the cluster primary). Without a `control` section the proxy runs
 * with the open gate (no kill switch, no allowlists, no admin API) and says so in the log.
 *
 * Both read the live configuration (src/reload.ts LiveConfiguration): key store names and key ->
 * HSM key mappings come from its registry, and each reload recompiles the control snapshot, so a key
 * store added by reload can be blocked or given a policy at once.
 */
import type { KeyStoreRegistry } from '../auth/key-stores';
import type { Config } from '../config/schema';
import type { AppLogger } from '../log/logger';
import { logAdminActions, type AdminActionRecord, type AdminActionSink } from '../admin/actions';
import { startAdminServer, type AdminServerDeps, type RunningAdminServer } from '../admin/server';
import { OPEN_GATE, type AccessGate } from './access-gate';
import type { ControlConfig } from './config';
import { ControlPlane, type ControlPlaneOptions } from './control-plane';
import type { HistoryEvent } from './state-model';
import { checkStateKey, hsmStateAuthenticator, type StateHsm } from './state-auth';
import { startFleetStore, type FleetParts } from './fleet-start';
import type { CredentialCipher } from '../auth/credential-envelope';

export interface ControlStartOptions {
  /** The HSM that authenticates the control state (required with a `control` section). */
  stateHsm?: StateHsm;
  onAdminAction?: AdminActionSink;
  /** Cluster: the primary propagates changes to the workers; workers run no admin listener. */
  propagateEngage?: ControlPlaneOptions['propagateEngage'];
  propagateChange?: ControlPlaneOptions['propagateChange'];
  noAdmin?: boolean;
  /** Hot reload for the admin API's POST /admin/v1/reload. */
  reload?: AdminServerDeps['reload'];
  now?: () => number;
  extraAdminRoutes?: AdminServerDeps['extraRoutes'];
  /** Quorum-approved retirement of key versions for the admin API (src/xks/key-retirement.ts). */
  retireKeyVersion?: AdminServerDeps['retireKeyVersion'];
  /** Fleet mode: this member's last deep health status (GetHealthStatus's), for its member record. */
  health?: () => string | undefined;
  /** Cluster worker N (server.workers > 1): in fleet mode a member of its own, `<nodeId>#w<N>`. */
  worker?: number;
  /** Fleet mode: the HSM's AES-GCM, which seals and opens the fleet's SigV4 credentials. */
  credentialCipher?: CredentialCipher;
}

export interface RunningControl {
  gate: AccessGate;
  control: ControlPlane | undefined;
  adminPort: number | undefined;
  /** Fleet mode: live members with a healthy deep check (GetHealthStatus's xksProxyFleetSize). */
  fleetSize?: (() => number) | undefined;
  /** Fleet mode: the membership (fleet status). */
  fleet?: FleetParts | undefined;
  close(graceMs?: number): Promise<void>;
}

/** The live configuration as the control plane reads it (src/reload.ts LiveConfiguration). */
export interface LiveControlConfig {
  readonly config: Readonly<Config> & { control?: ControlConfig | undefined };
  readonly registry: KeyStoreRegistry;
  onReload(part: { controlState?(): void }): void;
}

export async function startControl(live: LiveControlConfig, log: AppLogger, opts: ControlStartOptions = {}): Promise<RunningControl> {
  const { registry } = live;
  // Control settings apply at start (a reload reports them as needing a restart).
  const c = live.config.control;
  if (!c) {
    log.warn('no "control" section in the configuration: kill switch, key blocking, allowlists and the admin API are off');
    return { gate: OPEN_GATE, control: undefined, adminPort: undefined, close: async () => undefined };
  }
  const onAdminAction = opts.onAdminAction ?? logAdminActions(log);
  if (c.killSwitch.approvalsRequired < 2) log.warn('control.killSwitch.approvalsRequired is 1: one operator can lift a kill switch or loosen a policy alone');
  if (!opts.stateHsm) throw new Error('the control state needs the HSM to authenticate it');
  const stateAuth = hsmStateAuthenticator(opts.stateHsm, c.stateAuth);
  // Refuse to start without the MAC key: a state that cannot be authenticated would fail closed.
  await checkStateKey(stateAuth, live.config.hsm.tokenLabel);
  // With server.workers > 1 every worker is a fleet member of its own (an engage returns once each
  // one acknowledged) and so is the primary, whose admin API writes (docs/fleet.md).
  const fleet = c.store === 'etcd' && c.etcd ? startFleetStore(c.etcd, stateAuth, live.config, log, opts.now, opts.credentialCipher, opts.worker) : undefined;
  const control = await ControlPlane.open({
    stateAuth,
    ...(c.stateDir !== undefined ? { stateDir: c.stateDir } : {}),
    ...(fleet ? { store: fleet.store, awaitFleet: (r: number) => fleet.fleet.awaitAcks(r) } : {}),
    keyStores: registry,
    defaultForKeyStoresWithoutPolicy: c.policies.defaultForKeyStoresWithoutPolicy,
    approvalsRequired: c.killSwitch.approvalsRequired,
    approvalWindowMs: c.killSwitch.approvalWindowSeconds * 1000,
    drainTimeoutMs: c.killSwitch.drainTimeoutMs,
    watchIntervalMs: c.watchIntervalMs,
    log,
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.propagateEngage ? { propagateEngage: opts.propagateEngage } : {}),
    ...(opts.propagateChange ? { propagateChange: opts.propagateChange } : {}),
  });
  // Changes made by another process (the emergency CLI) reach the audit trail too.
  // Fleet mode: every member audits the changes it applies, with the etcd revision, so that each
  // node's chain shows when it started refusing.
  control.on('external-change', (events: HistoryEvent[], revision?: number) => {
    for (const e of events) {
      const r = historyToRecord(e);
      onAdminAction(revision === undefined ? r : { ...r, detail: [r.detail, `applied from etcd revision ${revision}`].filter(Boolean).join('; ') });
    }
  });
  // A change on disk the proxy did not make (bad MAC, older generation, deleted): audited, the
  // control plane has logged it at error level.
  control.on('tamper', (t: { reason: string; origin: string }) => onAdminAction(tamperRecord(c.store, t.reason, t.origin, opts.now)));
  if (fleet) await fleet.attach(control, onAdminAction, opts.health);
  // Loaded before the proxy serves (a KMS request signed with a fleet credential must verify at once).
  await fleet?.credentials?.follow(registry, onAdminAction);
  control.startWatching();
  live.onReload({
    controlState: () => {
      // The key store directory first (sync), then the state file (verified in the HSM, async).
      control.refresh();
      void control.reload('reload');
    },
  });
  const st = control.publicState();
  const tamper = control.tamperReason();
  if (tamper) {
    log.error(`control state TAMPERING detected at start-up: the state ${c.store === 'etcd' ? 'in etcd' : 'on disk'} was changed outside the proxy; every key store is blocked until it is repaired (xks-proxy killswitch repair)`, { reason: tamper });
    onAdminAction(tamperRecord(c.store, tamper, 'start', opts.now));
  } else if (st.failClosed) log.error('control state unreadable at start-up: every key store is blocked until it is repaired', { reason: st.failClosed });
  else log.info('control state loaded', { generation: st.generation, blocks: st.blocks.map((b) => b.scope), policies: Object.keys(st.policies) });

  let admin: RunningAdminServer | undefined;
  if (c.admin?.enabled && !opts.noAdmin) {
    try {
      admin = await startAdminServer({ admin: c.admin, config: () => live.config, control, registry, log, onAdminAction, ...(opts.now ? { now: opts.now } : {}), ...(opts.extraAdminRoutes ? { extraRoutes: opts.extraAdminRoutes } : {}), ...(opts.reload ? { reload: opts.reload } : {}), ...(opts.retireKeyVersion ? { retireKeyVersion: opts.retireKeyVersion } : {}), ...(fleet ? { claimJti: (id: string, expMs: number) => fleet.fleet.claimJti(id, expMs) } : {}), ...(fleet?.credentials ? { fleetCredentials: fleet.credentials } : {}) });
    } catch (e) {
      control.close();
      await fleet?.close();
      throw e;
    }
  }
  return {
    gate: control,
    control,
    adminPort: admin?.port,
    // At least 1: the member answering GetHealthStatus is one (its record may not be published yet).
    fleetSize: fleet ? () => Math.max(1, fleet.fleet.healthyCount()) : undefined,
    fleet,
    async close(graceMs = 1000) {
      control.close();
      await admin?.close(graceMs);
      await fleet?.close();
    },
  };
}

/**
 * The record names the store the untrusted state was found in: the state folder, or etcd (the
 * reason then names the key and the etcd revision of the value, for `etcdctl get --rev`).
 */
function tamperRecord(store: 'file' | 'etcd', reason: string, origin: string, now: (() => number) | undefined): AdminActionRecord {
  const where = store === 'etcd' ? 'in etcd' : 'on disk';
  return { time: new Date((now ?? Date.now)()).toISOString(), operator: 'unknown', via: store === 'etcd' ? 'etcd' : 'state-folder', action: 'control-state.tamper', outcome: 'error', errorName: 'Tampering', reason: `the control state ${where} does not authenticate; failing closed`, detail: `${reason} (detected on ${origin})` };
}

function historyToRecord(e: HistoryEvent): AdminActionRecord {
  const action = { engage: 'kill-switch.engage', 'approve-lift': 'kill-switch.approve-lift', lift: 'kill-switch.lift', 'policy-set': 'policy.set', 'policy-delete': 'policy.delete', 'policy-approve': 'policy.approve', repair: 'kill-switch.repair', 'retire-approve': 'key-version.retire-approve', 'retire-approved': 'key-version.retire-approved' }[e.action];
  return { time: e.at, operator: e.by.operator, via: e.by.via, action, scope: e.scope, keyStore: e.keyStore, reason: e.reason, outcome: 'ok', detail: [e.detail, e.by.osUser ? `os user ${e.by.osUser}` : undefined].filter(Boolean).join('; ') || undefined };
}
