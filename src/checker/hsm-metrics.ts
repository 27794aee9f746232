/**
 * `xks-proxy check --metrics URL`: the HSM call time our proxy measured, read from its /metrics
 * (xks_hsm_call_latency_seconds, xks_hsm_capacity_requests_per_second; src/hsm/call-latency.ts).
 * The XKS API itself does not expose it (and should not: it is the proxy's inside), and the
 * latency the checker sees from outside includes TLS, SigV4 and the network to the proxy.
 */
import http from 'node:http';
import https from 'node:https';
import { KMS_RATE_PER_KEY_STORE } from '../hsm/capacity';

export interface HsmMetricsReport {
  url: string;
  /** Median time of the proxy's recent C_Encrypt/C_Decrypt calls (undefined: none yet). */
  callLatencyMs?: number;
  /** HSM calls per second the link allows (summed over workers). */
  capacityPerSecond?: number;
  error?: string;
}

/** The value of an unlabelled sample in a Prometheus text exposition. */
function sampleOf(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

export async function readHsmMetrics(url: string, tls: { ca?: Buffer | undefined; insecure: boolean }): Promise<HsmMetricsReport> {
  try {
    const text = await new Promise<string>((resolve, reject) => {
      const get = url.startsWith('https:') ? https.get : http.get;
      const req = get(url, { ca: tls.ca, rejectUnauthorized: !tls.insecure, timeout: 5000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
      });
      req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
      req.on('error', reject);
    });
    const seconds = sampleOf(text, 'xks_hsm_call_latency_seconds');
    const capacity = sampleOf(text, 'xks_hsm_capacity_requests_per_second');
    return { url, ...(seconds !== undefined ? { callLatencyMs: Math.round(seconds * 1e6) / 1e3 } : {}), ...(capacity !== undefined ? { capacityPerSecond: capacity } : {}) };
  } catch (e) {
    return { url, error: (e as Error).message };
  }
}

export function formatHsmMetrics(r: HsmMetricsReport): string {
  if (r.error) return `HSM call time: not read from ${r.url} (${r.error})`;
  if (r.callLatencyMs === undefined) return `HSM call time: no HSM call measured yet (${r.url})`;
  const cap = r.capacityPerSecond;
  const verdict = cap === undefined ? '' : `; the HSM link carries about ${cap} calls per second, ${cap >= KMS_RATE_PER_KEY_STORE ? 'enough for' : 'UNDER'} KMS's ${KMS_RATE_PER_KEY_STORE} per key store`;
  return `HSM call time (the proxy's own measure, ${r.url}): ${r.callLatencyMs} ms per C_Encrypt/C_Decrypt${verdict}`;
}
