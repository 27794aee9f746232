/**
 * The deep health check (spec GetHealthStatus): a dedicated health key, never a customer key,
 * really encrypts and decrypts. It runs in the background so that GetHealthStatus and the
 * load-balancer readiness check answer from a cached result that is never older than 60 s
 * (spec: a cached result MUST NOT be older than one minute).
 *
 * When the backend reports that the HSM became unusable or usable again (its background
 * recovery, src/hsm/pkcs11-backend.ts), a check runs at once: readiness and GetHealthStatus follow
 * the HSM within one round trip instead of at the next interval.
 */
import crypto from 'node:crypto';
import type { HsmBackend } from '../hsm/backend';
import type { AppLogger } from '../log/logger';
import { toXksError, type ErrorName } from '../errors/xks-error';
import { buildGcmAad } from './aad';

export type EkmHealth = 'ACTIVE' | 'DEGRADED' | 'UNAVAILABLE';
/** Spec: a cached health result MUST NOT be older than one minute. */
export const MAX_HEALTH_AGE_MS = 60_000;

export interface HealthResult {
  status: EkmHealth;
  checkedAt: number;
  latencyMs: number;
  /** Log-safe reason when not ACTIVE. */
  detail?: string;
  /** When UNAVAILABLE: the XKS error the round trip failed with (start-up picks its advice by it). */
  errorName?: ErrorName;
}

export interface HealthMonitorOptions {
  healthKeyLabel: string;
  intervalMs: number;
  degradedAboveMs: number;
  now?: () => number;
}

export class HealthMonitor {
  private last: HealthResult | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<HealthResult> | undefined;
  /** The HSM's availability changed while a check was running: check again once it ends. */
  private recheck = false;
  private readonly now: () => number;

  constructor(
    private readonly hsm: HsmBackend,
    private readonly opts: HealthMonitorOptions,
    private readonly log: AppLogger,
  ) {
    this.now = opts.now ?? Date.now;
    hsm.onAvailabilityChange?.(() => this.checkAfterChange());
  }

  /** A check that starts after the change, not one already running that may predate it. */
  private checkAfterChange(): void {
    if (this.running) this.recheck = true;
    else void this.check();
  }

  /** One deep check: encrypt then decrypt 32 random bytes with the health key. */
  check(): Promise<HealthResult> {
    // Concurrent callers share one check in flight.
    this.running ??= this.runCheck().finally(() => {
      this.running = undefined;
      if (this.recheck) {
        this.recheck = false;
        void this.check();
      }
    });
    return this.running;
  }

  private async runCheck(): Promise<HealthResult> {
    const started = process.hrtime.bigint();
    let result: HealthResult;
    try {
      const probe = crypto.randomBytes(32);
      const aad = buildGcmAad(Buffer.from('xks-proxy-health-check'), undefined);
      const enc = await this.hsm.encrypt(this.opts.healthKeyLabel, probe, aad);
      const back = await this.hsm.decrypt(this.opts.healthKeyLabel, enc.ciphertext, enc.iv, enc.tag, aad);
      if (!back.equals(probe)) throw new Error('health key round trip returned different bytes');
      const latencyMs = Number(process.hrtime.bigint() - started) / 1e6;
      result = latencyMs > this.opts.degradedAboveMs
        ? { status: 'DEGRADED', checkedAt: this.now(), latencyMs, detail: `deep check took ${latencyMs.toFixed(1)} ms` }
        : { status: 'ACTIVE', checkedAt: this.now(), latencyMs };
    } catch (e) {
      const err = toXksError(e);
      const latencyMs = Number(process.hrtime.bigint() - started) / 1e6;
      result = { status: 'UNAVAILABLE', checkedAt: this.now(), latencyMs, detail: `${err.errorName}: ${err.detail ?? err.message}`, errorName: err.errorName };
    }
    if (result.status !== this.last?.status) {
      const level = result.status === 'ACTIVE' ? 'info' : 'warn';
      this.log.log(level, 'deep health status', { status: result.status, latencyMs: Math.round(result.latencyMs * 10) / 10, detail: result.detail });
    }
    this.last = result;
    return result;
  }

  /** The cached result, or a fresh check when the cache is missing or older than 60 s. */
  async current(): Promise<HealthResult> {
    const last = this.last;
    if (last && this.now() - last.checkedAt < MAX_HEALTH_AGE_MS) return last;
    return this.check();
  }

  /** Cached result only (never waits); undefined when none or too old. For readiness probes. */
  cached(): HealthResult | undefined {
    const last = this.last;
    return last && this.now() - last.checkedAt < MAX_HEALTH_AGE_MS ? last : undefined;
  }

  start(): void {
    this.stop();
    this.timer = setInterval(() => void this.check(), this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
