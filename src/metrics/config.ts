/**
 * Metrics configuration (section `metrics`). The registry always exists (it is cheap); this only
 * decides where it is exposed and how fine the labels are.
 */
import { z } from 'zod';

export const MetricsConfig = z
  .object({
    /**
     * A dedicated plain-HTTP listener for /metrics (Prometheus scrapes it). Absent: /metrics is
     * only served where the admin listener mounts it. Plain HTTP, so keep it on a private address.
     */
    port: z.number().int().min(0).max(65535).optional(),
    host: z.string().min(1).default('127.0.0.1'),
    /**
     * Add an externalKeyId label to the request metrics. Off by default: label values must stay
     * bounded, and even when on only keys configured in a key store get their own value.
     */
    keyIdLabels: z.boolean().default(false),
    /**
     * /metrics on the admin listener: "off" (default; use metrics.port for Prometheus), or
     * "authenticated": only with an admin token of a role that may read (auditor, operator).
     * Metrics name key stores, credentials and load, which is not for anyone who reaches the port.
     */
    adminListener: z.enum(['off', 'authenticated']).default('off'),
  })
  .strict();
export type MetricsConfig = z.infer<typeof MetricsConfig>;

export const METRICS_DEFAULTS: MetricsConfig = { host: '127.0.0.1', keyIdLabels: false, adminListener: 'off' };
