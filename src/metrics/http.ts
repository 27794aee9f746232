/**
 * Serving /metrics: a request handler the admin listener mounts, and the optional dedicated
 * plain-HTTP listener (metrics.port, on metrics.host, 127.0.0.1 by default).
 */
import type http from 'node:http';
import type express from 'express';
import type { AdminGuards } from '../admin/server';
import { sendServiceError } from '../http/respond';
import { createPlainServer } from '../http/server';
import type { MetricsConfig } from './config';
import type { PromMeter } from './prom-meter';

export const METRICS_PATH = '/metrics';

/** A node/express handler answering the Prometheus text exposition of `meter`. */
export function metricsHandler(meter: PromMeter): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendServiceError(res, 405, 'method-not-allowed', 'GET or HEAD only.', { Allow: 'GET, HEAD' });
      return;
    }
    meter.scrape().then(
      ({ contentType, body }) => {
        res.writeHead(200, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      () => sendServiceError(res, 500, 'internal', 'metrics collection failed; see the proxy log'),
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
    else sendServiceError(res, 404, 'not-found', `only ${METRICS_PATH} is served here`);
  });
}
