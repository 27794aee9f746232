/**
 * The etcd v3 client of fleet mode, built from control.etcd (TLS with client certificates, etcd's
 * user/password read from a file), and the small helpers the fleet code shares.
 */
import fs from 'node:fs';
import { Etcd3, isRecoverableError, type IOptions } from 'etcd3';
import { readSecret } from '../config/secrets';
import type { EtcdConfig } from './config';

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type HostPolicy = ReturnType<NonNullable<FaultHandling['host']>>;
type WatchBackoff = NonNullable<FaultHandling['watchBackoff']>;

/** Consecutive recoverable failures after which a host is skipped for a while. */
const BREAK_AFTER = 3;

/**
 * The client's per-host circuit breaker, with a short open time. The client's default skips a host
 * for 5 s after 3 consecutive failures; while the etcd quorum is lost every host fails, so every
 * breaker was open when the quorum came back, and the members stayed failing closed for up to 5 s
 * more (part of the 3.5-12 s recovery measured with bench/fleet-recovery.ts). Open for a quarter of
 * maxStalenessMs (one heartbeat), a dead host still costs one failed attempt per heartbeat at most.
 * After the open time the next failure opens it again at once (half-open); a success closes it.
 * The client only calls execute() (connection-pool.js): a throw without calling `fn` makes it try
 * the next host.
 */
class HostBreaker {
  declare readonly _altReturn: never;
  private failures = 0;
  private openUntil = 0;
  /** Opened since the last success: the next failure opens it again. */
  private halfOpen = false;
  readonly onSuccess = () => ({ dispose: () => undefined });
  readonly onFailure = () => ({ dispose: () => undefined });

  constructor(
    private readonly host: string,
    private readonly openMs: number,
  ) {}

  async execute<T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> {
    const now = Date.now();
    if (now < this.openUntil) throw new Error(`etcd host ${this.host} skipped for ${this.openMs} ms after ${BREAK_AFTER} consecutive failures`);
    try {
      const r = await fn({ signal: new AbortController().signal });
      this.failures = 0;
      this.halfOpen = false;
      return r;
    } catch (e) {
      if (e instanceof Error && isRecoverableError(e) && (this.halfOpen || ++this.failures >= BREAK_AFTER)) {
        this.openUntil = Date.now() + this.openMs;
        this.failures = 0;
        this.halfOpen = true;
      }
      throw e;
    }
  }
}

/**
 * Re-establishing a broken watch: doubling from `initialMs`, capped at `maxMs` (with jitter, so
 * that the members of a fleet do not reconnect in step). The client's default grows to 30 s,
 * which kept a member's watch down (and the member failing closed) for seconds after etcd was back.
 */
class CappedBackoff {
  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
    private readonly attempt = 0,
  ) {}

  get duration(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    return base / 2 + (Math.random() * base) / 2;
  }

  next(): CappedBackoff {
    return new CappedBackoff(this.initialMs, this.maxMs, Math.min(this.attempt + 1, 20));
  }
}

export function connectEtcd(c: EtcdConfig): Etcd3 {
  // A call sent to a member that just died waits for its connection without a deadline; with one,
  // it fails as DEADLINE_EXCEEDED, which the client retries on another member (seen in the fleet
  // test: token id claims hung for 5 s after one etcd member was killed). Streams (watch, lease
  // keep-alive) have no deadline.
  const attemptMs = Math.max(500, Math.floor(c.maxStalenessMs / 3));
  // Every retry and reconnection waits at most one heartbeat (etcd-store.ts confirms the state
  // every maxStalenessMs / 4): a member serves again about one heartbeat after etcd answers.
  const heartbeatMs = Math.max(50, Math.floor(c.maxStalenessMs / 4));
  const opts: IOptions = {
    hosts: c.endpoints.map((e) => e.replace(/\/$/, '')),
    dialTimeout: Math.max(1000, c.maxStalenessMs),
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + attemptMs }),
    faultHandling: {
      host: (h): HostPolicy => new HostBreaker(h, heartbeatMs) as unknown as HostPolicy,
      watchBackoff: new CappedBackoff(Math.min(100, heartbeatMs), heartbeatMs) as WatchBackoff,
    },
    // gRPC's own reconnection back-off (1 s, growing to 2 min by default), for the same reason.
    grpcOptions: { 'grpc.initial_reconnect_backoff_ms': Math.min(100, heartbeatMs), 'grpc.max_reconnect_backoff_ms': heartbeatMs },
  };
  if (c.tls) {
    opts.credentials = {
      rootCertificate: fs.readFileSync(c.tls.caFile),
      ...(c.tls.keyFile ? { privateKey: fs.readFileSync(c.tls.keyFile) } : {}),
      ...(c.tls.certFile ? { certChain: fs.readFileSync(c.tls.certFile) } : {}),
    };
  }
  if (c.auth) opts.auth = { username: c.auth.username, password: readSecret({ file: c.auth.passwordFile }) };
  return new Etcd3(opts);
}

/** The promise's result, or a rejection naming `what` once `ms` have passed (the call is abandoned). */
export function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from etcd within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A prefix that ends with "/" (keys are prefix + name). */
export function normalisePrefix(p: string): string {
  return p.endsWith('/') ? p : `${p}/`;
}
