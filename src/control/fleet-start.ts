/**
 * Fleet mode's parts for the composition root (start.ts): the etcd client, the control store in
 * etcd and the membership, and how they follow the control plane (acks, staleness audited, the
 * member's health in its record).
 */
import os from 'node:os';
import type { Etcd3 } from 'etcd3';
import type { AdminActionSink } from '../admin/actions';
import type { Config } from '../config/schema';
import type { AppLogger } from '../log/logger';
import type { FleetMetrics } from '../metrics/prom-meter';
import { VERSION } from '../version';
import type { EtcdConfig } from './config';
import type { ControlPlane } from './control-plane';
import { connectEtcd, normalisePrefix } from './etcd-client';
import { EtcdControlStore } from './etcd-store';
import { EtcdFleet } from './fleet';
import { FleetCredentials } from './fleet-credentials';
import type { CredentialCipher } from '../auth/credential-envelope';
import type { StateAuthenticator } from './state-auth';

export interface FleetParts {
  client: Etcd3;
  store: EtcdControlStore;
  fleet: EtcdFleet;
  /** SigV4 credentials sealed in the HSM and shared through etcd (absent without an HSM cipher). */
  credentials: FleetCredentials | undefined;
  /** Follow the control plane: acks, staleness audit, health; joins the fleet (retrying until etcd answers). */
  attach(control: ControlPlane, audit: AdminActionSink, health: (() => string | undefined) | undefined): Promise<void>;
  /** Scrape-time figures for the metrics (prom-meter.ts FleetMetrics). */
  metrics(): FleetMetrics;
  close(): Promise<void>;
}

/** Joining again after a failure (etcd down at start-up): not test synchronisation. */
const REJOIN_MS = 1000;
const HEALTH_PUBLISH_MS = 1000;

export function defaultNodeId(config: Readonly<Config>): string {
  return config.server.port === 0 ? `${os.hostname()}-${process.pid}` : `${os.hostname()}:${config.server.port}`;
}

/**
 * worker: this process is worker N of a proxy with server.workers > 1, a member of its own
 * (`<nodeId>#w<N>`); the primary and a single process are `<nodeId>`.
 */
export function startFleetStore(e: EtcdConfig, auth: StateAuthenticator, config: Readonly<Config>, log: AppLogger, now?: () => number, cipher?: CredentialCipher, worker?: number): FleetParts {
  const prefix = normalisePrefix(e.prefix);
  const client = connectEtcd(e);
  const store = new EtcdControlStore(client, auth, { prefix, maxStalenessMs: e.maxStalenessMs, keepLastKnownMs: e.keepLastKnownMs, log, ...(now ? { now } : {}) });
  const proxyId = e.nodeId ?? defaultNodeId(config);
  const nodeId = worker === undefined ? proxyId : `${proxyId}#w${worker}`;
  const fleet = new EtcdFleet(client, store, { prefix, nodeId, proxy: proxyId, version: VERSION, address: e.advertiseAddress ?? `${config.server.host}:${config.server.port}`, leaseTtlSeconds: e.leaseTtlSeconds, ackTimeoutMs: e.ackTimeoutMs, log, ...(now ? { now } : {}) });
  const credentials = cipher && new FleetCredentials(client, cipher, { prefix, wrapKeyLabel: e.credentialWrapKeyLabel, nodeId, log, callMs: Math.max(500, Math.floor(e.maxStalenessMs / 2)), ...(now ? { now } : {}) });
  const timers: NodeJS.Timeout[] = [];
  let closed = false;
  const stamp = () => new Date((now ?? Date.now)()).toISOString();
  return {
    client,
    store,
    fleet,
    credentials,
    async attach(control, audit, health) {
      control.on('applied', (a: { revision?: number }) => fleet.ack(a.revision));
      control.on('stale', (s: { reason: string }) => {
        log.error('fleet: the control state cannot be confirmed; failing closed (every crypto call refused, not ready) until etcd answers again', { nodeId, reason: s.reason });
        audit({ time: stamp(), operator: nodeId, via: 'etcd', action: 'control-state.stale', outcome: 'error', errorName: 'StaleControlState', reason: 'the control state in etcd cannot be confirmed; failing closed', detail: s.reason });
      });
      control.on('recovered', (s: { was?: string }) => {
        log.warn('fleet: the control state is confirmed again; re-reading it', { nodeId });
        audit({ time: stamp(), operator: nodeId, via: 'etcd', action: 'control-state.recovered', outcome: 'ok', reason: 'the control state in etcd is confirmed again', detail: s.was });
      });
      const join = (): Promise<void> => {
        if (closed) return Promise.resolve();
        return fleet.start().then(
          () => {
            fleet.ack(store.revision());
            log.info('fleet: joined', { nodeId, prefix, members: fleet.list().map((m) => m.nodeId) });
          },
          (err: Error) => {
            log.error('fleet: cannot join (etcd unreachable?); retrying; this member fails closed meanwhile', { nodeId, reason: err.message });
            timers.push(setTimeout(join, REJOIN_MS).unref());
          },
        );
      };
      const publishHealth = () => fleet.setHealth(health?.() ?? 'UNKNOWN', control.isFailClosed());
      // In the first record already (the start-up deep check has run).
      publishHealth();
      // The first attempt before the proxy serves (a member is waited for by engages once joined).
      await join();
      const publish = setInterval(publishHealth, HEALTH_PUBLISH_MS);
      publish.unref();
      timers.push(publish);
    },
    metrics() {
      const stalenessMs = store.stalenessMs();
      return {
        members: fleet.list().length,
        healthyMembers: fleet.healthyCount(),
        appliedRevision: fleet.appliedRevision(),
        storeUp: !store.isStale(),
        stalenessSeconds: stalenessMs / 1000,
        credentials: credentials?.counts(),
      };
    },
    async close() {
      closed = true;
      for (const t of timers) clearTimeout(t);
      await credentials?.close();
      await store.close();
      await fleet.close();
      client.close();
    },
  };
}
