/**
 * A cluster worker: a full proxy (startProxy in worker mode) that reports ready to the primary,
 * applies the primary's control changes at once, and registers its metrics for aggregation.
 */
import { AggregatorRegistry } from 'prom-client';
import type { LoadedConfig } from '../config/load';
import type { AppLogger } from '../log/logger';
import { startProxy, type RunningProxy } from '../main';
import type { PrimaryMessage, WorkerMessage } from './messages';

export async function startWorker(loaded: LoadedConfig, index: number, log: AppLogger): Promise<RunningProxy> {
  const proxy = await startProxy(loaded, { cluster: { index }, log });
  // prom-client answers the primary's aggregation requests once an AggregatorRegistry exists in
  // the worker too; this worker's metrics are its meter's own registry.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([proxy.meter.registry]);
  const send = (m: WorkerMessage) => process.send?.(m);
  process.on('message', (m: PrimaryMessage) => {
    if (m.type === 'xks:control-reload') {
      const done = proxy.control ? proxy.control.reload('cluster') : Promise.resolve(false);
      if (m.id !== undefined) void done.then(() => send({ type: 'xks:control-loaded', id: m.id! }));
    } else if (m.type === 'xks:reload') {
      proxy.reload().then(
        (r) => send({ type: 'xks:reloaded', id: m.id, needsRestart: r.needsRestart }),
        (e: unknown) => send({ type: 'xks:reloaded', id: m.id, error: (e as Error).message }),
      );
    } else if (m.type === 'xks:engage') {
      const plane = proxy.control;
      const done = plane ? plane.syncEngaged(m.scope) : Promise.resolve({ drained: true, stillInFlight: 0 });
      done.then(
        (r) => send({ type: 'xks:engaged', id: m.id, ...r }),
        (e: unknown) => {
          log.error('kill switch sync failed in a worker', { reason: (e as Error).message });
          send({ type: 'xks:engaged', id: m.id, drained: false, stillInFlight: 1 });
        },
      );
    }
  });
  send({ type: 'xks:ready', port: proxy.port });
  return proxy;
}
