/**
 * The meter interface the rest of the appliance calls. It has a no-op default (NOOP_METER) so
 * that nothing needs metrics to work; src/metrics/prom-meter.ts is the Prometheus implementation.
 *
 * Label values must stay bounded (an attacker controls request ids, principals and key ids in
 * URLs): every label value a meter emits comes from the configuration or from a fixed table.
 */
import type { RequestRecord } from '../log/request-log';
import { SIGV4_FAILURE_REASONS, type SigV4FailureReason } from '../auth/sigv4';

/** HSM operations as the metered backend names them. */
export type HsmOperation = 'describe_key' | 'encrypt' | 'decrypt';

/** The kill switch state, supplied by the control module at scrape time. */
export interface ControlState {
  /** The proxy-wide kill switch is engaged. */
  proxy: boolean;
  /** Names of key stores blocked as a whole. */
  keyStores: readonly string[];
  /** Number of blocked keys, by key store name. */
  keys: Readonly<Record<string, number>>;
}
export type ControlStateProvider = () => ControlState;

/**
 * ControlState from block scopes as the control module writes them: "proxy", "keystore:NAME",
 * "key:NAME/EXTERNALKEYID". Unknown shapes are ignored.
 */
export function controlStateFromScopes(scopes: Iterable<string>): ControlState {
  const state = { proxy: false, keyStores: [] as string[], keys: {} as Record<string, number> };
  for (const s of scopes) {
    if (s === 'proxy') state.proxy = true;
    else if (s.startsWith('keystore:')) state.keyStores.push(s.slice('keystore:'.length));
    else if (s.startsWith('key:')) {
      const rest = s.slice('key:'.length);
      const ks = rest.slice(0, Math.max(0, rest.indexOf('/')));
      state.keys[ks] = (state.keys[ks] ?? 0) + 1;
    }
  }
  return state;
}

export interface Meter {
  /**
   * One XKS request is over (called next to the request log write, in the pipeline's finally).
   * Requests, latency, SigV4 failures by reason and throttling are all derived from the record,
   * so a request is counted once whatever rejected it.
   */
  requestCompleted(record: Readonly<RequestRecord>): void;
  /** One call into the HSM backend (the metered backend decorator calls it). */
  hsmOperation(op: HsmOperation, seconds: number, outcome: string): void;
}

export const NOOP_METER: Meter = {
  requestCompleted: () => undefined,
  hsmOperation: () => undefined,
};

/** The metric label for a refused signature: the verifier's reason code (XksError.reason), bounded. */
export function sigv4FailureReason(reasonCode: string | undefined): SigV4FailureReason | 'other' {
  const r = reasonCode?.startsWith('sigv4.') ? reasonCode.slice('sigv4.'.length) : undefined;
  return (SIGV4_FAILURE_REASONS as readonly string[]).includes(r ?? '') ? (r as SigV4FailureReason) : 'other';
}
