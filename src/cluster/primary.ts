/**
 * Serving on several cores: `server.workers` > 1 forks that many worker processes (node:cluster),
 * each a full proxy with its own PKCS#11 sessions on the shared listening port. The primary serves
 * no XKS request; it owns what must exist once:
 *  - the admin API and the control plane's writes. An engage returns only once every worker has
 *    loaded the new state and drained its own operations in scope (IPC, with acknowledgement), so
 *    "no HSM operation starts in scope once the engage call has returned" holds for the cluster;
 *  - /metrics, aggregated over the workers (prom-client's AggregatorRegistry);
 *  - the audit chain of admin actions (each worker keeps its own chain of XKS requests);
 *  - signals: SIGTERM/SIGINT stop the workers gracefully, SIGHUP is forwarded (hot reload).
 * A worker that dies is replaced; a worker that cannot start stops the whole start-up.
 */
import cluster, { type Worker } from 'node:cluster';
import http from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import { auditAdminActions } from '../admin/actions';
import { KeyStoreRegistry } from '../auth/key-stores';
import { asAuditSink, openRequestOrAuditLog } from '../audit/sink';
import type { LoadedConfig } from '../config/load';
import { startControl, type RunningControl } from '../control/start';
import { closeServer, listen } from '../http/server';
import type { AppLogger } from '../log/logger';
import { METRICS_PATH, adminMetricsRoute } from '../metrics/http';
import { StartupError } from '../main';
import type { EngageAck, PrimaryMessage, WorkerMessage } from './messages';

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
  const acks = new Map<number, (a: EngageAck) => void>();

  const send = (w: Worker, m: PrimaryMessage) => {
    if (w.isConnected()) w.send(m);
  };

  /** Every live worker loads the engaged state and drains its operations in scope. */
  async function propagateEngage(scope: string): Promise<{ drained: boolean; stillInFlight: number }> {
    const timeoutMs = (config.control?.killSwitch.drainTimeoutMs ?? 5000) + 2000;
    const answers = await Promise.all(
      [...workers.values()].map(
        (w) =>
          new Promise<EngageAck>((resolve) => {
            const id = ++nextAck;
            const timer = setTimeout(() => {
              acks.delete(id);
              log.error('a worker did not confirm a kill switch engage in time', { pid: w.process.pid, scope });
              resolve({ type: 'xks:engaged', id, drained: false, stillInFlight: 1 });
            }, timeoutMs);
            acks.set(id, (a) => {
              clearTimeout(timer);
              resolve(a);
            });
            send(w, { type: 'xks:engage', id, scope });
          }),
      ),
    );
    return { drained: answers.every((a) => a.drained), stillInFlight: answers.reduce((n, a) => n + a.stillInFlight, 0) };
  }

  const registry = new KeyStoreRegistry(config, log);
  const audit = openRequestOrAuditLog(config, log);
  const adminSink = asAuditSink(audit, log);
  let control: RunningControl;
  try {
    control = await startControl(config, registry, log, {
      onAdminAction: auditAdminActions(adminSink),
      extraAdminRoutes: adminMetricsRoute(config.metrics, (_req, res) => void serveMetrics(res)),
      propagateEngage,
      propagateChange: () => workers.forEach((w) => send(w, { type: 'xks:control-reload' })),
      // The admin API's reload: each worker re-reads the file itself (as on SIGHUP).
      reload: async () => {
        reloadAll();
        return { forwardedToWorkers: workers.size };
      },
    });
  } catch (e) {
    await audit.close();
    throw new StartupError(`control: ${(e as Error).message}`);
  }

  async function serveMetrics(res: http.ServerResponse): Promise<void> {
    try {
      const body = await aggregator.clusterMetrics();
      res.writeHead(200, { 'Content-Type': aggregator.contentType, 'Cache-Control': 'no-store' }).end(body);
    } catch (e) {
      log.error('cluster metrics failed', { reason: (e as Error).message });
      res.writeHead(503, { 'Content-Type': 'text/plain' }).end('metrics unavailable\n');
    }
  }

  let metricsServer: http.Server | undefined;
  let metricsPort: number | undefined;
  if (config.metrics.port !== undefined) {
    metricsServer = http.createServer((req, res) => {
      if (req.method === 'GET' && req.url === METRICS_PATH) void serveMetrics(res);
      else res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
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
      if (m.type === 'xks:engaged') {
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

  function reloadAll(): void {
    registry.reload();
    control.control?.reload('reload');
    workers.forEach((w) => w.process.kill('SIGHUP'));
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
      if (metricsServer) await closeServer(metricsServer, 1000);
      await audit.close();
    },
  };
}
