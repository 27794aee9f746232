/**
 * Serving /metrics: a request handler the admin listener mounts, and the optional dedicated
 * plain-HTTP listener (metrics.port, on metrics.host, 127.0.0.1 by default).
 */
import type http from 'node:http';
import type express from 'express';
import type { AdminGuards } from '../admin/server';
import { createPlainServer } from '../http/server';
import type { MetricsConfig } from './config';
import type { PromMeter } from './prom-meter';

export const METRICS_PATH = '/metrics';

/** A node/express handler answering the Prometheus text exposition of `meter`. */
export function metricsHandler(meter: PromMeter): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'application/json', Allow: 'GET, HEAD' }).end(JSON.stringify({ errorName: 'MethodNotAllowed', errorMessage: 'GET only.' }));
      return;
    }
    meter.scrape().then(
      ({ contentType, body }) => {
        res.writeHead(200, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      () => res.writeHead(500, { 'Content-Type': 'text/plain' }).end('metrics collection failed\n'),
    );
  };
}

/**
 * /metrics on the admin listener, as metrics.adminListener says: nothing when "off" (the admin
 * API answers 404), behind an admin token of a reading role when "authenticated".
 */
export function adminMetricsRoute(cfg: Pick<MetricsConfig, 'adminListener'>, handler: (req: http.IncomingMessage, res: http.ServerResponse) => void): (app: express.Express, guard: AdminGuards) => void {
  return (app, guard) => {
    if (cfg.adminListener === 'authenticated') app.get(METRICS_PATH, ...guard.reader, (req, res) => handler(req, res));
  };
}

/** The dedicated listener: GET /metrics only, 404 for anything else. */
export function createMetricsServer(meter: PromMeter): http.Server {
  const handle = metricsHandler(meter);
  return createPlainServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === METRICS_PATH) handle(req, res);
    else res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
  });
}
