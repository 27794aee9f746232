/**
 * The Prometheus meter (prom-client). Each instance has its own Registry, never prom-client's
 * global one: tests run several proxies in one process, and a module-level registry would be a
 * singleton (design.md: no module-level singletons).
 *
 * Counters and histograms move on hooks (Meter); everything that is a state rather than an event
 * (session pool, deep health, kill switch, certificate and credential ages) is read at scrape time
 * through callbacks, so it is never stale and costs nothing between scrapes.
 *
 * Bounded labels only: key store names, API names, error names and HSM operations come from the
 * configuration or fixed tables; request ids and principals never become labels; externalKeyId
 * only when metrics.keyIdLabels is on, and then only for keys configured in the key store.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestRecord } from '../log/request-log';
import type { PoolStats } from '../hsm/backend';
import type { HsmCallStats } from '../hsm/call-latency';
import type { HealthResult } from '../xks/health-monitor';
import { VERSION } from '../version';
import type { KeyVersionStatus } from '../xks/key-versions';
import { registerKeyVersionMetrics } from './key-version-metrics';
import { sigv4FailureReason, type ControlStateProvider, type HsmOperation, type Meter } from './meter';

/** Seconds. Resolves 1..250 ms (KMS gives a proxy call 250 ms in all) and shows what lies beyond. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1];

const HEALTH_STATES = ['ACTIVE', 'DEGRADED', 'UNAVAILABLE', 'UNKNOWN'] as const;
const DAY_MS = 86_400_000;

export interface CredentialAge {
  keyStore: string;
  accessKeyId: string;
  /** When the credential was created (mtime of its secret file). */
  createdAtMs: number;
}

/** State read at scrape time. Every field is optional: a missing source emits nothing. */
export interface MeterSources {
  /** Configured key store names (bounded label values). */
  keyStores?: readonly string[];
  /** Session pool state; `size` is the number of sessions open now (the pool opens them lazily). */
  pool?: () => PoolStats;
  /** The configured pool size. */
  poolMax?: number;
  /** The measured time of the HSM's own calls (src/hsm/call-latency.ts). */
  hsmCalls?: () => HsmCallStats | undefined;
  /** The cached deep health result (undefined when none or too old: UNKNOWN). */
  health?: () => HealthResult | undefined;
  /** The certificate the HTTPS listener serves (read once: that is the one clients see). */
  tlsCertFile?: string | undefined;
  credentials?: () => readonly CredentialAge[];
  /** Whether externalKeyId is configured in the key store (keeps key id labels bounded). */
  knownKey?: (keyStore: string, externalKeyId: string) => boolean;
  /** Audit log counters, when the audit log is on. */
  audit?: () => { records: number; writeErrors: number; lastCheckpointMs: number | undefined; lastCheckpointSeq?: number | undefined };
  /** Load shedding state (src/http/overload.ts). */
  overload?: () => { shedShare: number; inFlight: number };
  /** Requests not yet authenticated (src/http/pre-auth.ts). */
  preAuth?: () => { pending: number; peers: number };
  /** Whether the control state is trusted now (not failing closed) and whether tampering was found. */
  controlTrust?: () => { trusted: boolean; tampered: boolean };
  /** Key versions of the keys served (key-version-metrics.ts). */
  keyVersions?: () => readonly KeyVersionStatus[];
  /** Fleet mode (control.store: etcd): membership and the control store's freshness. */
  fleet?: () => FleetMetrics;
  now?: () => number;
}

export interface FleetMetrics {
  members: number;
  healthyMembers: number;
  appliedRevision: number;
  /** The control state is confirmed within the staleness bound. */
  storeUp: boolean;
  stalenessSeconds: number;
  /** Fleet credentials (control/fleet-credentials.ts): accepted, and values in etcd this member refuses. */
  credentials?: { accepted: number; refused: number } | undefined;
}

export interface PromMeterOptions {
  keyIdLabels?: boolean;
  /** Process metrics (CPU, memory, event loop lag, GC). Default on. */
  processMetrics?: boolean;
}

export class PromMeter implements Meter {
  readonly registry = new Registry();
  private readonly keyIdLabels: boolean;
  private sources: MeterSources = {};
  private control: ControlStateProvider | undefined;
  private certNotAfterMs: number | undefined;
  private certFile: string | undefined;
  private certMtimeMs = -1;
  private readonly requests: Counter<string>;
  private readonly latency: Histogram<string>;
  private readonly hsmLatency: Histogram<string>;
  private readonly sigv4Failures: Counter<string>;
  private readonly throttledRequests: Counter<string>;
  private readonly sampleAadDecrypts: Counter<string>;

  constructor(opts: PromMeterOptions = {}) {
    this.keyIdLabels = opts.keyIdLabels ?? false;
    const registers = [this.registry];
    const keyLabels = this.keyIdLabels ? ['key_store', 'external_key_id', 'api'] : ['key_store', 'api'];
    this.requests = new Counter({ name: 'xks_requests_total', help: 'XKS requests by key store, API and outcome (ok or the errorName).', labelNames: [...keyLabels, 'outcome'], registers });
    this.latency = new Histogram({ name: 'xks_request_duration_seconds', help: 'XKS request processing time, from the first byte to the response (seconds).', labelNames: [...keyLabels, 'outcome'], buckets: LATENCY_BUCKETS, registers });
    this.hsmLatency = new Histogram({ name: 'xks_hsm_operation_duration_seconds', help: 'Time of one HSM backend call, session wait included (seconds).', labelNames: ['operation', 'outcome'], buckets: LATENCY_BUCKETS, registers });
    this.sigv4Failures = new Counter({ name: 'xks_sigv4_failures_total', help: 'Requests refused by SigV4 verification, by key store and bounded reason.', labelNames: ['key_store', 'reason'], registers });
    this.sampleAadDecrypts = new Counter({ name: 'xks_aws_sample_aad_decrypts_total', help: 'Decrypts that succeeded only with the AWS sample proxy\'s AAD layout (keyStores[].compatibility: aws-sample), by key store. Flat for long enough: the setting can be turned off.', labelNames: ['key_store'], registers });
    this.throttledRequests = new Counter({ name: 'xks_throttled_requests_total', help: 'Requests refused with ThrottlingException, by key store.', labelNames: ['key_store'], registers });

    new Gauge({ name: 'xks_build_info', help: 'Version of the proxy (always 1).', labelNames: ['version'], registers, aggregator: 'max' }).set({ version: VERSION }, 1);
    const self = this;
    new Gauge({
      name: 'xks_hsm_session_pool', help: 'HSM session pool by state: max (configured size), open (sessions open now), in_use, and waiters (requests waiting for a session).', labelNames: ['state'], registers,
      collect() {
        if (self.sources.poolMax !== undefined) this.set({ state: 'max' }, self.sources.poolMax);
        const p = self.sources.pool?.();
        if (!p) return;
        this.set({ state: 'open' }, p.size);
        this.set({ state: 'in_use' }, p.inUse);
        this.set({ state: 'waiters' }, p.waiters);
      },
    });
    new Gauge({
      name: 'xks_hsm_call_latency_seconds', help: 'Median time of the last 256 C_Encrypt/C_Decrypt calls, without the session wait (the network round trip of a network HSM).', registers, aggregator: 'average',
      collect() {
        const ms = self.sources.hsmCalls?.()?.recentMs;
        if (ms !== undefined) this.set(ms / 1000);
      },
    });
    new Gauge({
      name: 'xks_hsm_capacity_requests_per_second', help: 'HSM calls per second the link allows at that latency (concurrent calls x 1 / latency); under 1800, KMS\'s rate to a key store cannot be served.', registers, aggregator: 'sum',
      collect() {
        const c = self.sources.hsmCalls?.()?.capacityPerSecond;
        if (c !== undefined && Number.isFinite(c)) this.set(Math.round(c));
      },
    });
    new Gauge({
      name: 'xks_health_status', help: 'Deep health status (GetHealthStatus): 1 for the current status, 0 for the others. UNKNOWN: no result younger than 60 s.', labelNames: ['status'], registers,
      collect() {
        if (!self.sources.health) return;
        const h = self.sources.health();
        const current = h?.status ?? 'UNKNOWN';
        for (const s of HEALTH_STATES) this.set({ status: s }, s === current ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xks_health_check_duration_seconds', help: 'Duration of the last deep health check (a real encrypt and decrypt).', registers,
      collect() {
        const h = self.sources.health?.();
        if (h) this.set(h.latencyMs / 1000);
      },
    });
    new Gauge({
      name: 'xks_kill_switch_engaged', help: 'Kill switch engaged (1) or not (0), by scope: proxy, or key_store with its name.', labelNames: ['scope', 'key_store'], registers,
      collect() {
        const c = self.control?.();
        this.set({ scope: 'proxy', key_store: '' }, c?.proxy ? 1 : 0);
        const blocked = new Set(c?.keyStores ?? []);
        for (const ks of self.sources.keyStores ?? []) this.set({ scope: 'key_store', key_store: ks }, blocked.has(ks) ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xks_blocked_keys', help: 'Number of external keys blocked by the operator, by key store.', labelNames: ['key_store'], registers,
      collect() {
        const c = self.control?.();
        for (const ks of self.sources.keyStores ?? []) this.set({ key_store: ks }, c?.keys[ks] ?? 0);
      },
    });
    registerKeyVersionMetrics(registers, () => self.sources.keyVersions?.());
    new Gauge({
      name: 'xks_tls_certificate_expiry_days', help: 'Days until the served TLS certificate expires (negative once expired).', registers,
      collect() {
        const notAfter = self.certNotAfter();
        if (notAfter !== undefined) this.set((notAfter - self.now()) / DAY_MS);
      },
    });
    new Gauge({
      name: 'xks_sigv4_credential_age_days', help: 'Age in days of each active SigV4 credential (from its secret file, or a fleet credential\'s sealed creation time). Inline env-var credentials are not listed.', labelNames: ['key_store', 'access_key_id'], registers,
      collect() {
        this.reset();
        for (const c of self.sources.credentials?.() ?? []) this.set({ key_store: c.keyStore, access_key_id: c.accessKeyId }, (self.now() - c.createdAtMs) / DAY_MS);
      },
    });
    new Gauge({
      // A cluster reports its worst worker: one untrusted worker refuses its share of the traffic.
      name: 'xks_control_state_trusted', help: 'The kill-switch / policy state is verified and in force (1), or the proxy fails closed because it cannot trust it (0).', registers, aggregator: 'min',
      collect() {
        const c = self.sources.controlTrust?.();
        if (c) this.set(c.trusted ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xks_control_state_tampered', help: 'The control state on disk (or in the store) was changed outside the proxy and did not authenticate (1) until a quorum repairs it.', registers, aggregator: 'max',
      collect() {
        const c = self.sources.controlTrust?.();
        if (c) this.set(c.tampered ? 1 : 0);
      },
    });
    new Gauge({
      // A cluster reports its most loaded worker: a share summed over workers would mean nothing.
      name: 'xks_overload_shed_ratio', help: 'Share of new XKS requests refused now with ThrottlingException because the proxy is over capacity (0 to 1).', registers, aggregator: 'max',
      collect() {
        const o = self.sources.overload?.();
        if (o) this.set(o.shedShare);
      },
    });
    new Gauge({
      name: 'xks_requests_in_flight', help: 'XKS requests being processed now.', registers,
      collect() {
        const o = self.sources.overload?.();
        if (o) this.set(o.inFlight);
      },
    });
    // Slow uploads without credentials fill this bound, not the authenticated capacity
    // (src/http/pre-auth.ts): near server.preAuth.maxPending, someone is holding connections open.
    new Gauge({
      name: 'xks_preauth_pending', help: 'XKS requests whose body has not fully arrived or whose signature is not checked yet (bounded by server.preAuth.maxPending).', registers,
      collect() {
        const p = self.sources.preAuth?.();
        if (p) this.set(p.pending);
      },
    });
    new Gauge({
      name: 'xks_preauth_peers', help: 'Peer addresses with requests awaiting their body or authentication.', registers,
      collect() {
        const p = self.sources.preAuth?.();
        if (p) this.set(p.peers);
      },
    });
    // Counters kept by the audit log itself, copied at scrape time.
    new Counter({
      name: 'xks_audit_records_total', help: 'Audit records written since start.', registers,
      collect() {
        const a = self.sources.audit?.();
        if (!a) return;
        this.reset();
        this.inc(a.records);
      },
    });
    new Counter({
      name: 'xks_audit_write_errors_total', help: 'Audit lines that could not be written since start. Any is a gap in the chain.', registers,
      collect() {
        const a = self.sources.audit?.();
        if (!a) return;
        this.reset();
        this.inc(a.writeErrors);
      },
    });
    new Gauge({
      name: 'xks_audit_last_checkpoint_timestamp_seconds', help: 'Time of the last signed audit checkpoint (Unix seconds).', registers,
      collect() {
        const t = self.sources.audit?.()?.lastCheckpointMs;
        if (t !== undefined) this.set(t / 1000);
      },
    });
    new Gauge({
      // For `audit verify --expect-seq`: the log must reach at least this far. Per audit stream
      // (one per process); a cluster's aggregate keeps the highest, the primary's own /metrics per worker is not split.
      name: 'xks_audit_last_checkpoint_seq', help: 'seq of the last signed audit checkpoint record of this process (audit verify --expect-seq).', registers, aggregator: 'max',
      collect() {
        const s = self.sources.audit?.()?.lastCheckpointSeq;
        if (s !== undefined) this.set(s);
      },
    });
    const fleetGauge = (name: string, help: string, value: (f: FleetMetrics) => number) =>
      new Gauge({
        name, help, registers, aggregator: 'max',
        collect() {
          const f = self.sources.fleet?.();
          if (f) this.set(value(f));
        },
      });
    fleetGauge('xks_fleet_members', 'Fleet mode: live members of the fleet (unexpired membership leases).', (f) => f.members);
    fleetGauge('xks_fleet_members_healthy', 'Fleet mode: live members whose deep health check passes (GetHealthStatus xksProxyFleetSize).', (f) => f.healthyMembers);
    fleetGauge('xks_control_applied_revision', 'Fleet mode: the etcd revision of the control state this member has applied.', (f) => f.appliedRevision);
    fleetGauge('xks_control_store_up', 'Fleet mode: 1 while this member confirms the control state within control.etcd.maxStalenessMs, 0 while it fails closed for want of it.', (f) => (f.storeUp ? 1 : 0));
    fleetGauge('xks_fleet_credentials_accepted', 'Fleet mode: SigV4 credentials from etcd this member accepted (decrypted in the HSM).', (f) => f.credentials?.accepted ?? 0);
    fleetGauge('xks_fleet_credentials_refused', 'Fleet mode: credential values in etcd this member refuses (do not authenticate in the HSM, or no HSM verdict yet).', (f) => f.credentials?.refused ?? 0);
    fleetGauge('xks_control_staleness_seconds', 'Fleet mode: seconds since this member last confirmed the control state with an etcd quorum.', (f) => f.stalenessSeconds);
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  private now(): number {
    return (this.sources.now ?? Date.now)();
  }

  /** Attach (or replace) the scrape-time sources. */
  bind(sources: MeterSources): void {
    this.sources = { ...this.sources, ...sources };
    if ('tlsCertFile' in sources) this.setTlsCertFile(sources.tlsCertFile);
  }

  /** The certificate the listener serves; a reload that swaps it calls this. */
  setTlsCertFile(file: string | undefined): void {
    this.certFile = file;
    this.certMtimeMs = -1;
  }

  /** Re-read when the file changes (a renewed certificate in place, then SIGHUP), else cached. */
  private certNotAfter(): number | undefined {
    if (this.certFile === undefined) return undefined;
    try {
      const m = fs.statSync(this.certFile).mtimeMs;
      if (m !== this.certMtimeMs) {
        this.certMtimeMs = m;
        this.certNotAfterMs = certificateNotAfter(this.certFile);
      }
    } catch {
      this.certNotAfterMs = undefined;
    }
    return this.certNotAfterMs;
  }

  /** The control module reports kill switch and blocked keys through this. */
  setControlStateProvider(fn: ControlStateProvider | undefined): void {
    this.control = fn;
  }

  requestCompleted(r: Readonly<RequestRecord>): void {
    const keyStore = r.keyStore ?? '';
    const outcome = r.outcome === 'ok' ? 'ok' : (r.errorName ?? 'error');
    const labels: Record<string, string> = { key_store: keyStore, api: r.api, outcome };
    if (this.keyIdLabels) labels.external_key_id = this.keyIdLabel(r);
    this.requests.inc(labels);
    this.latency.observe(labels, r.latencyMs / 1000);
    if (r.errorName === 'AuthenticationFailedException') this.sigv4Failures.inc({ key_store: keyStore, reason: sigv4FailureReason(r.reasonCode) });
    else if (r.errorName === 'ThrottlingException') this.throttledRequests.inc({ key_store: keyStore });
    if (r.aadLayout === 'aws-sample') this.sampleAadDecrypts.inc({ key_store: keyStore });
  }

  private keyIdLabel(r: Readonly<RequestRecord>): string {
    if (r.externalKeyId === undefined) return '';
    const known = r.keyStore !== undefined && (this.sources.knownKey?.(r.keyStore, r.externalKeyId) ?? false);
    return known ? r.externalKeyId : '_other';
  }

  hsmOperation(op: HsmOperation, seconds: number, outcome: string): void {
    this.hsmLatency.observe({ operation: op, outcome }, seconds);
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** notAfter of the first certificate in a PEM file, or undefined when unreadable. */
export function certificateNotAfter(file: string): number | undefined {
  try {
    const t = Date.parse(new crypto.X509Certificate(fs.readFileSync(file)).validTo);
    return Number.isNaN(t) ? undefined : t;
  } catch {
    return undefined;
  }
}
