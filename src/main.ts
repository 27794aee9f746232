/**
 * Composition root: load config -> open the HSM (refuse to start if module, token, PIN or health
 * key is wrong) -> first deep health check -> build the app -> listen. Signals: SIGTERM/SIGINT
 * stop accepting, finish in-flight requests, close the HSM.
 *
 * Every part reads one live configuration (LiveConfiguration, src/reload.ts): the key store
 * registry and the configuration in force; reload goes through it alone.
 */
import type http from 'node:http';
import path from 'node:path';
import express from 'express';
import { addProbeRoutes, buildApp } from './app';
import { KeyStoreRegistry } from './auth/key-stores';
import { type LoadedConfig } from './config/load';
import type { Config } from './config/schema';
import type { ErrorName } from './errors/xks-error';
import type { HsmBackend } from './hsm/backend';
import { openConfiguredHsm } from './hsm/open-configured';
import { StartupError } from './errors/startup-error';
import { createAppLogger, type AppLogger } from './log/logger';
import type { RequestLog } from './log/request-log';
import type { AuditSink } from './audit/records';
import { asAuditSink, openRequestOrAuditLog } from './audit/sink';
import { adminMetricsRoute, createMetricsServer, metricsHandler } from './metrics/http';
import { auditAdminActions, type AdminActionSink } from './admin/actions';
import type { ControlPlane } from './control/control-plane';
import { startControl, type RunningControl } from './control/start';
import { MeteredBackend } from './metrics/metered-backend';
import { PromMeter } from './metrics/prom-meter';
import { proxySources } from './metrics/sources';
import { controlStateFromScopes } from './metrics/meter';
import { closeServer, createMainServer, createPlainServer, listen, reloadTls } from './http/server';
import { LiveConfiguration, type ReloadResult } from './reload';
import { PreAuthLimiter } from './http/pre-auth';
import { OverloadGuard } from './http/overload';
import { VERSION } from './version';
import { HealthMonitor } from './xks/health-monitor';
import { KeyVersionManager, auditVersionEvents } from './xks/key-versions';
import { KeyRetirement, type RetireRequest } from './xks/key-retirement';
import { EtcdEncryptionCounter } from './control/etcd-encryption-counter';
import { normalisePrefix } from './control/etcd-client';
import { XksService } from './xks/service';

/** Running as worker `index` of a cluster (server.workers > 1): see src/cluster/. */
export interface ClusterWorkerRole {
  index: number;
}

export interface StartOptions {
  cluster?: ClusterWorkerRole;
  log?: AppLogger;
  requestLog?: RequestLog;
  /** Metrics registry to use (default: a new one per proxy). */
  meter?: PromMeter;
  /** Use this backend instead of opening the configured PKCS#11 module (fault injection in tests). */
  hsm?: HsmBackend;
  env?: NodeJS.ProcessEnv;
  now?: () => number;
  /** Where admin actions go (default: the audit stream). */
  onAdminAction?: AdminActionSink;
}

export interface RunningProxy {
  port: number;
  plainPort: number | undefined;
  /** The dedicated /metrics listener (metrics.port), when configured. */
  metricsPort: number | undefined;
  meter: PromMeter;
  /** Where admin actions are recorded (the audit log, or the application log without one). */
  audit: AuditSink;
  /** Kill switch and allowlists (absent without a `control` config section). */
  control: ControlPlane | undefined;
  /** The admin API listener, when control.admin is enabled. */
  adminPort: number | undefined;
  registry: KeyStoreRegistry;
  health: HealthMonitor;
  hsm: HsmBackend;
  /** Key versions and their usage counts (src/xks/key-versions.ts). */
  versions: KeyVersionManager;
  /** Load shedding state (429 beyond capacity). */
  overload: OverloadGuard;
  /** Hot reload of the configuration file (SIGHUP). Rejects with ConfigError; the old config stays. */
  reload(): Promise<ReloadResult>;
  close(graceMs?: number): Promise<void>;
}

export { StartupError, openConfiguredHsm };

/**
 * What the operator should look at when the first deep health check fails. The HSM is open and
 * logged in by then, so a failed round trip is the health key, or an hsm.ivMode that does not match
 * how the HSM produces the GCM IV: the backend fails closed on an answer that does not fit the mode
 * (its detail names hsm.ivMode), an HSM that appends an IV the proxy did not expect answers
 * CKR_BUFFER_TOO_SMALL, and one that silently used another IV fails the decrypt.
 */
export function healthFailureAdvice(hsm: Pick<Config['hsm'], 'healthKeyLabel' | 'ivMode'>, errorName: ErrorName | undefined): string {
  switch (errorName) {
    case 'KeyNotFoundException':
      return `Create it with: xks-proxy keys create --label ${hsm.healthKeyLabel}`;
    case 'InvalidKeyUsageException':
      return `It must be an AES-256 key that may encrypt and decrypt, as xks-proxy keys create --label <label> makes (then set hsm.healthKeyLabel).`;
    default:
      return (
        `Check hsm.ivMode (now "${hsm.ivMode}") against how the HSM produces the GCM IV: "proxy" if it takes the proxy's IV, ` +
        `"hsm-params" if it writes its own into the mechanism parameters (AWS CloudHSM), "hsm-appended" if it appends it to the output (Luna in FIPS mode); see docs/hsm-profiles.md.`
      );
  }
}

export async function startProxy(loaded: LoadedConfig, opts: StartOptions = {}): Promise<RunningProxy> {
  const config = opts.cluster ? workerConfig(loaded.config, opts.cluster) : loaded.config;
  const env = opts.env ?? process.env;
  const log = opts.log ?? createAppLogger(config.log.level);
  const meter = opts.meter ?? new PromMeter({ keyIdLabels: config.metrics.keyIdLabels });
  const hsm: HsmBackend = new MeteredBackend(opts.hsm ?? (await openConfiguredHsm(config.hsm, env, log)), meter);
  const health = new HealthMonitor(hsm, { healthKeyLabel: config.hsm.healthKeyLabel, intervalMs: config.health.intervalMs, degradedAboveMs: config.health.degradedAboveMs }, log);
  const first = await health.check();
  if (first.status === 'UNAVAILABLE') {
    await hsm.close();
    throw new StartupError(`HSM: the deep health check (encrypt then decrypt with key "${config.hsm.healthKeyLabel}") failed (${first.detail}). ${healthFailureAdvice(config.hsm, first.errorName)}`);
  }
  const live = new LiveConfiguration(loaded.file, config, log, env, opts.cluster ? (c) => workerConfig(c, opts.cluster!) : undefined);
  const registry = live.registry;
  let requestLog: RequestLog;
  try {
    requestLog = opts.requestLog ?? openRequestOrAuditLog(config, log);
  } catch (e) {
    await hsm.close();
    throw new StartupError(`audit log: ${(e as Error).message}`);
  }
  const audit = asAuditSink(requestLog, log);
  meter.bind(proxySources({ config, registry, hsm, health, requestLog }));
  let versions: KeyVersionManager;
  try {
    versions = new KeyVersionManager(hsm, config.keyVersions, log);
  } catch (e) {
    await hsm.close();
    if (!opts.requestLog) await requestLog.close();
    throw new StartupError(`keyVersions.usageDir: ${(e as Error).message}`);
  }
  // Every version change this proxy makes or first sees is in its audit chain.
  versions.onVersionEvent = auditVersionEvents(audit);
  versions.start();
  meter.bind({ keyVersions: () => versions.status() });
  // Fleet mode: xksProxyFleetSize is the live members with a healthy deep check (control/fleet.ts).
  let fleetSize: (() => number) | undefined;
  const identity = { vendor: config.proxy.vendor, model: `${config.proxy.model} ${VERSION}`, get fleetSize() { return fleetSize?.() ?? config.proxy.fleetSize; } };
  const service = new XksService(hsm, health, identity, log, versions);
  // The admin API's reload needs the running proxy, which exists only once startControl returned.
  let reloadNow: (() => Promise<ReloadResult>) | undefined;
  const reloadLater = () => (reloadNow ? reloadNow() : Promise.reject(new Error('the proxy is still starting')));
  // Retiring needs the control plane, which startControl makes: bound once it exists.
  let retirement: KeyRetirement | undefined;
  const retireKeyVersion = (r: RetireRequest) => (retirement ? retirement.request(r) : Promise.reject(new Error('the proxy is still starting')));
  let fleetUsage: EtcdEncryptionCounter | undefined;
  let control: RunningControl;
  try {
    control = await startControl(live, log, { stateHsm: hsm, retireKeyVersion, ...(opts.cluster ? { noAdmin: true, worker: opts.cluster.index } : {}), reload: () => reloadLater(), onAdminAction: opts.onAdminAction ?? auditAdminActions(audit), extraAdminRoutes: adminMetricsRoute(config.metrics, metricsHandler(meter)), ...(opts.now ? { now: opts.now } : {}), health: () => health.cached()?.status, credentialCipher: hsm });
    fleetSize = control.fleetSize;
    const fleetParts = control.fleet;
    if (fleetParts) meter.bind({ fleet: () => fleetParts.metrics() });
    // Fleet mode: every member encrypts under the same HSM keys, so the GCM count is the fleet's,
    // reserved in etcd block by block (before the listeners open: no Encrypt has run yet).
    const etcd = config.control?.etcd;
    if (fleetParts && etcd) {
      fleetUsage = new EtcdEncryptionCounter(fleetParts.client, normalisePrefix(etcd.prefix), Math.max(500, Math.floor(etcd.maxStalenessMs / 2)), log, etcd.keepLastKnownMs > 0, fleetParts.fleet.nodeId);
      versions.ledger.useShared(fleetUsage);
    }
  } catch (e) {
    await hsm.close();
    if (!opts.requestLog) await requestLog.close();
    throw new StartupError(`control: ${(e as Error).message}`);
  }
  const plane = control.control;
  const fleetDecrypts = fleetUsage ? fleetUsage.decryptsOf.bind(fleetUsage) : undefined;
  if (plane) retirement = new KeyRetirement({ versions, hsm, control: plane, quietDays: config.keyVersions.retireQuietDays, ...(fleetDecrypts ? { fleetDecrypts } : {}), ...(opts.now ? { now: opts.now } : {}) });
  if (plane) {
    meter.setControlStateProvider(() => controlStateFromScopes(plane.effectiveScopes()));
    meter.bind({ controlTrust: () => ({ trusted: plane.readinessFault() === undefined, tampered: plane.tamperReason() !== undefined }) });
  }
  const overload = new OverloadGuard(config.server.overload);
  meter.bind({ overload: () => overload.state() });
  const preAuth = new PreAuthLimiter(config.server.preAuth);
  meter.bind({ preAuth: () => preAuth.state() });
  const controlFault = () => plane?.readinessFault();
  const app = buildApp({ config, registry, service, health, requestLog, log, meter, gate: control.gate, controlFault, overload, preAuth, ...(opts.now ? { now: opts.now } : {}) });

  const servers: http.Server[] = [];
  let port: number;
  let plainPort: number | undefined;
  let metricsPort: number | undefined;
  try {
    const main = createMainServer(config.server, app, (subject, remoteAddress) => log.warn('mTLS client refused: subject not allowed', { subject, remoteAddress }));
    servers.push(main);
    port = (await listen(main, config.server.port, config.server.host)).port;
    if (config.healthEndpoints.plainPort !== undefined) {
      const probes = express();
      probes.disable('x-powered-by');
      addProbeRoutes(probes, { config, health, controlFault });
      const plain = createPlainServer(probes);
      servers.push(plain);
      plainPort = (await listen(plain, config.healthEndpoints.plainPort, config.healthEndpoints.plainHost)).port;
    }
    if (config.metrics.port !== undefined) {
      const metrics = createMetricsServer(meter);
      servers.push(metrics);
      metricsPort = (await listen(metrics, config.metrics.port, config.metrics.host)).port;
    }
  } catch (e) {
    await Promise.all(servers.map((s) => closeServer(s, 0)));
    await control.close(0);
    await hsm.close();
    if (!opts.requestLog) await requestLog.close();
    throw new StartupError(`listen: ${(e as Error).message}`);
  }
  health.start();
  overload.start();
  registry.startReloading(config.sigv4.reloadIntervalMs);
  log.info('xks proxy listening', {
    port,
    plainPort,
    metricsPort,
    tls: !config.server.plainHttp,
    keyStores: registry.all().map((k) => ({ name: k.name, uriPath: k.uriPath, keys: k.keyList().length, credentials: k.accessKeyIds().length })),
    version: VERSION,
  });

  const mainServer = servers[0]!;
  live.onReload({
    tls: (tls) => {
      reloadTls(mainServer, tls);
      meter.setTlsCertFile(tls.certFile);
    },
    logLevel: (level) => (log.level = level),
  });
  let closing: Promise<void> | undefined;
  const running: RunningProxy = {
    port,
    plainPort,
    metricsPort,
    meter,
    audit,
    control: control.control,
    adminPort: control.adminPort,
    registry,
    health,
    hsm,
    versions,
    overload,
    async reload() {
      const result = live.reload();
      versions.invalidate();
      log.info('configuration reloaded', { ...result });
      if (result.needsRestart.length) log.warn('changed settings that need a restart to apply', { settings: result.needsRestart });
      return result;
    },
    close(graceMs = 10_000) {
      closing ??= (async () => {
        health.stop();
        overload.stop();
        registry.stopReloading();
        await Promise.all(servers.map((s) => closeServer(s, graceMs)));
        await control.close(Math.min(graceMs, 1000));
        await versions.close();
        await hsm.close();
        if (!opts.requestLog) await requestLog.close();
      })();
      return closing;
    },
  };
  reloadNow = () => running.reload();
  return running;
}

/**
 * A cluster worker's view of the configuration: the primary owns the admin API and the metrics
 * port (it aggregates the workers' metrics); each worker writes its own audit chain, in a folder of
 * its own next to the configured file, since one chain has one writer.
 */
function workerConfig(c: Readonly<Config>, role: ClusterWorkerRole): Readonly<Config> {
  const auditFile = c.audit.file && path.join(path.dirname(c.audit.file), `worker-${role.index}`, path.basename(c.audit.file));
  return {
    ...c,
    metrics: { ...c.metrics, port: undefined },
    audit: { ...c.audit, file: auditFile },
  };
}
