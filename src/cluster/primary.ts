/**
 * Serving on several cores: `server.workers` > 1 forks that many worker processes (node:cluster),
 * each a full proxy with its own PKCS#11 sessions on the shared listening port. The primary serves
 * no XKS request; it owns what must exist once:
 *  - the admin API and the control plane's writes (with one HSM session: the control state is
 *    authenticated inside the HSM). An engage returns only once every worker has
 *    loaded the new state and drained its own operations in scope (IPC, with acknowledgement), so
 *    "no HSM operation starts in scope once the engage call has returned" holds for the cluster;
 *  - /metrics, aggregated over the workers (prom-client's AggregatorRegistry);
 *  - the audit chain of admin actions (each worker keeps its own chain of XKS requests);
 *  - signals: SIGTERM/SIGINT stop the workers gracefully, SIGHUP is forwarded (hot reload).
 * The primary reads the same live configuration as a single process (LiveConfiguration): a reload
 * re-reads the file here too (key stores included, so the admin API can block a key store or key
 * added by it at once), then each worker re-reads it itself.
 * A worker that dies is replaced; a worker that cannot start stops the whole start-up.
 */
import cluster, { type Worker } from 'node:cluster';
import http from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import { auditAdminActions } from '../admin/actions';
import { asAuditSink, openRequestOrAuditLog } from '../audit/sink';
import type { LoadedConfig } from '../config/load';
import { startControl, type RunningControl } from '../control/start';
import { sendServiceError } from '../http/respond';
import { closeServer, listen } from '../http/server';
import type { AppLogger } from '../log/logger';
import { METRICS_PATH, adminMetricsRoute } from '../metrics/http';
import { StartupError } from '../errors/startup-error';
import { openConfiguredHsm } from '../hsm/open-configured';
import { LiveConfiguration, type ReloadResult } from '../reload';
import { KeyRetirement, type RetireRequest } from '../xks/key-retirement';
import { KeyVersionManager, auditVersionEvents } from '../xks/key-versions';
import type { HsmBackend } from '../hsm/backend';
import type { ControlAck, EngageAck, PrimaryMessage, ReloadAck, WorkerMessage } from './messages';

export interface RunningPrimary {
  port: number;
  adminPort: number | undefined;
  metricsPort: number | undefined;
  workerPids(): number[];
  reload(): void;
  close(): Promise<void>;
}

const RESPAWN_LIMIT = 5;

export async function startPrimary(loaded: LoadedConfig, log: AppLogger, workerArgs: string[]): Promise<RunningPrimary> {
  const { config } = loaded;
  const count = config.server.workers;
  const aggregator = new AggregatorRegistry();
  const workers = new Map<number, Worker>();
  let stopping = false;
  let nextAck = 0;
  /** Answers awaited from workers, by message id (engage and reload acknowledgements). */
  const acks = new Map<number, (a: EngageAck | ReloadAck | ControlAck) => void>();

  const send = (w: Worker, m: PrimaryMessage) => {
    if (w.isConnected()) w.send(m);
  };

  /** Sends a request to every live worker and waits for each one's answer (or `late` after timeoutMs). */
  function askAll<A extends EngageAck | ReloadAck | ControlAck>(request: (id: number) => PrimaryMessage, timeoutMs: number, late: (w: Worker, id: number) => A): Promise<A[]> {
    return Promise.all(
      [...workers.values()].map(
        (w) =>
          new Promise<A>((resolve) => {
            const id = ++nextAck;
            const timer = setTimeout(() => {
              acks.delete(id);
              resolve(late(w, id));
            }, timeoutMs);
            acks.set(id, (a) => {
              clearTimeout(timer);
              resolve(a as A);
            });
            send(w, request(id));
          }),
      ),
    );
  }

  /** Every live worker loads the engaged state and drains its operations in scope. */
  async function propagateEngage(scope: string): Promise<{ drained: boolean; stillInFlight: number }> {
    const timeoutMs = (config.control?.killSwitch.drainTimeoutMs ?? 5000) + 2000;
    const answers = await askAll<EngageAck>((id) => ({ type: 'xks:engage', id, scope }), timeoutMs, (w, id) => {
      log.error('a worker did not confirm a kill switch engage in time', { pid: w.process.pid, scope });
      return { type: 'xks:engaged', id, drained: false, stillInFlight: 1 };
    });
    return { drained: answers.every((a) => a.drained), stillInFlight: answers.reduce((n, a) => n + a.stillInFlight, 0) };
  }

  /**
   * Every live worker has loaded a control change (a lift, a policy) before the admin call
   * returns: loading verifies the state in the HSM, asynchronously, so a worker could otherwise
   * serve a new connection with the old state.
   */
  async function propagateChange(): Promise<void> {
    await askAll<ControlAck>((id) => ({ type: 'xks:control-reload', id }), 5000, (w, id) => {
      log.error('a worker did not confirm a control state change in time', { pid: w.process.pid });
      return { type: 'xks:control-loaded', id };
    });
  }

  const live = new LiveConfiguration(loaded.file, config, log);
  live.onReload({ logLevel: (level) => (log.level = level) });
  // The primary writes the control state, which the HSM authenticates: one session is enough.
  const stateHsm: HsmBackend | undefined = config.control ? await openConfiguredHsm({ ...config.hsm, pool: { ...config.hsm.pool, size: 1 } }, process.env, log) : undefined;
  const audit = openRequestOrAuditLog(config, log);
  const adminSink = asAuditSink(audit, log);
  // Retiring a key version goes through the admin API, which is here: the primary reads the
  // versions and the shared usage ledger (keyVersions.usageDir, written by the workers) and
  // destroys through its own HSM session (src/xks/key-retirement.ts). No timers: the workers count.
  const versions = stateHsm ? new KeyVersionManager(stateHsm, config.keyVersions, log) : undefined;
  if (versions) versions.onVersionEvent = auditVersionEvents(adminSink);
  let retirement: KeyRetirement | undefined;
  const retireKeyVersion = (r: RetireRequest) => (retirement ? retirement.request(r) : Promise.reject(new Error('the proxy is still starting')));
  let control: RunningControl;
  try {
    control = await startControl(live, log, {
      // Fleet mode: the primary is a member too (its admin API writes), and seals fleet credentials.
      ...(stateHsm ? { stateHsm, credentialCipher: stateHsm } : {}),
      retireKeyVersion,
      onAdminAction: auditAdminActions(adminSink),
      extraAdminRoutes: adminMetricsRoute(config.metrics, (_req, res) => void serveMetrics(res)),
      propagateEngage,
      propagateChange,
      // The admin API's reload: here first (an invalid file is refused with its problems), then
      // each worker re-reads the file itself (as on SIGHUP).
      reload: () => reloadHereAndInWorkers(),
    });
  } catch (e) {
    await audit.close();
    await stateHsm?.close();
    throw new StartupError(`control: ${(e as Error).message}`);
  }
  const plane = control.control;
  if (plane && versions && stateHsm) retirement = new KeyRetirement({ versions, hsm: stateHsm, control: plane, quietDays: config.keyVersions.retireQuietDays });

  async function serveMetrics(res: http.ServerResponse): Promise<void> {
    try {
      const body = await aggregator.clusterMetrics();
      res.writeHead(200, { 'Content-Type': aggregator.contentType, 'Cache-Control': 'no-store' }).end(body);
    } catch (e) {
      log.error('cluster metrics failed', { reason: (e as Error).message });
      sendServiceError(res, 503, 'unavailable', 'cluster metrics unavailable; see the proxy log');
    }
  }

  let metricsServer: http.Server | undefined;
  let metricsPort: number | undefined;
  if (config.metrics.port !== undefined) {
    metricsServer = http.createServer((req, res) => {
      if (req.method === 'GET' && req.url === METRICS_PATH) void serveMetrics(res);
      else sendServiceError(res, 404, 'not-found', `only ${METRICS_PATH} is served here`);
    });
    metricsPort = (await listen(metricsServer, config.metrics.port, config.metrics.host)).port;
  }

  cluster.setupPrimary({ args: workerArgs });
  let respawns = 0;
  let port = 0;

  function fork(index: number): Promise<number> {
    const w = cluster.fork({ XKS_WORKER_INDEX: String(index) });
    workers.set(index, w);
    w.on('message', (m: WorkerMessage) => {
      if (m.type === 'xks:engaged' || m.type === 'xks:reloaded' || m.type === 'xks:control-loaded') {
        acks.get(m.id)?.(m);
        acks.delete(m.id);
      }
    });
    return new Promise<number>((resolve, reject) => {
      const onExit = (code: number | null) => reject(new StartupError(`worker ${index} exited with ${code} while starting (see its error above)`));
      w.once('exit', onExit);
      w.on('message', (m: WorkerMessage) => {
        if (m.type !== 'xks:ready') return;
        w.off('exit', onExit);
        w.on('exit', (code, signal) => {
          workers.delete(index);
          if (stopping) return;
          log.error('worker died; starting a new one', { index, pid: w.process.pid, code, signal });
          if (++respawns > RESPAWN_LIMIT) {
            log.error('workers keep dying; stopping', { respawns });
            process.kill(process.pid, 'SIGTERM');
            return;
          }
          fork(index).catch((e: unknown) => log.error('replacement worker failed to start', { index, reason: (e as Error).message }));
        });
        resolve(m.port);
      });
    });
  }

  /**
   * Re-read the file here, then in every worker; resolves once each worker has applied it (so a key
   * store added by the reload is served, blockable and governed by policy everywhere when it
   * returns). Rejects with ConfigError when the file is invalid: then neither the primary nor a
   * worker changes.
   */
  async function reloadHereAndInWorkers(): Promise<ReloadResult & { workers: { reloaded: number; failed: string[]; needsRestart: string[] } }> {
    const result = live.reload();
    log.info('configuration reloaded', { ...result });
    const answers = await askAll<ReloadAck>((id) => ({ type: 'xks:reload', id }), 30_000, (w, id) => ({ type: 'xks:reloaded', id, error: `worker ${w.process.pid} did not confirm the reload in time` }));
    const failed = answers.flatMap((a) => (a.error ? [a.error] : []));
    if (failed.length) log.error('a worker did not apply the reload', { failed });
    const needsRestart = [...new Set(answers.flatMap((a) => a.needsRestart ?? []))];
    return { ...result, workers: { reloaded: answers.length - failed.length, failed, needsRestart } };
  }

  function reloadAll(): void {
    reloadHereAndInWorkers().catch((e: unknown) => log.error('configuration NOT reloaded, the running one stays', { reason: (e as Error).message }));
  }

  async function stopWorkers(): Promise<void> {
    stopping = true;
    await Promise.all(
      [...workers.values()].map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            w.once('exit', () => resolve());
            w.process.kill('SIGTERM');
          }),
      ),
    );
  }

  try {
    const ports = await Promise.all(Array.from({ length: count }, (_, i) => fork(i + 1)));
    port = ports[0]!;
  } catch (e) {
    await stopWorkers();
    await control.close(0);
    await stateHsm?.close();
    if (metricsServer) await closeServer(metricsServer, 0);
    await audit.close();
    throw e;
  }
  log.info('xks proxy cluster listening', { port, workers: count, adminPort: control.adminPort, metricsPort });

  return {
    port,
    adminPort: control.adminPort,
    metricsPort,
    workerPids: () => [...workers.values()].map((w) => w.process.pid!).filter(Boolean),
    reload: reloadAll,
    async close() {
      await stopWorkers();
      await control.close(1000);
      await stateHsm?.close();
      if (metricsServer) await closeServer(metricsServer, 1000);
      await audit.close();
    },
  };
}
