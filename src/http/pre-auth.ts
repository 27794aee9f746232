/**
 * Pre-authentication admission: a bound on requests whose body has not fully arrived or whose
 * signature has not been checked yet, kept apart from the capacity that authenticated callers use
 * (src/http/overload.ts counts a request only once it is authenticated).
 *
 * Why: anyone who can open a TLS connection can send headers and then dribble the body. Before
 * this bound existed, 300 such connections without credentials took every in-flight slot and KMS's
 * signed requests were refused with 429 for as long as they stayed. Now they can only fill this
 * pool, in total and per peer address, and each one leaves it at the body deadline
 * (server.bodyTimeoutMs) at the latest. KMS sends its small bodies at once, so its requests spend
 * a moment here.
 *
 * The per-peer bound keys on the TCP peer address. Behind a load balancer that does not preserve
 * client addresses every caller shares the balancer's addresses; the total bound and the body
 * deadline still hold then.
 */
/**
 * A request beyond the bounds is not turned away before its body had a chance: KMS sends its body
 * with its headers, so it is in at once, and such a request goes on without a slot. Only a body
 * still missing after this long is refused. Without this grace, an attacker spread over enough
 * addresses to fill the total bound would have KMS refused with it.
 */
export const OVER_BOUND_GRACE_MS = 50;

export interface PreAuthOptions {
  maxPending: number;
  maxPendingPerPeer: number;
}

/** Held from admission until the body is in and the signature checked; release is idempotent. */
export interface PreAuthTicket {
  release(): void;
}

export type Admission = { ticket: PreAuthTicket; refused?: undefined } | { ticket?: undefined; refused: string };

export class PreAuthLimiter {
  private pending = 0;
  private readonly perPeer = new Map<string, number>();

  constructor(private readonly o: PreAuthOptions) {}

  /** Admit one request from `peer`, or say why not (the reason goes to the log only). */
  admit(peer: string | undefined): Admission {
    const key = peer ?? 'unknown';
    const mine = this.perPeer.get(key) ?? 0;
    if (mine >= this.o.maxPendingPerPeer) return { refused: `${mine} requests from ${key} awaiting body or authentication (max ${this.o.maxPendingPerPeer} per peer)` };
    if (this.pending >= this.o.maxPending) return { refused: `${this.pending} requests awaiting body or authentication (max ${this.o.maxPending})` };
    this.pending++;
    this.perPeer.set(key, mine + 1);
    let held = true;
    return {
      ticket: {
        release: () => {
          if (!held) return;
          held = false;
          this.pending--;
          const n = this.perPeer.get(key)! - 1;
          if (n === 0) this.perPeer.delete(key);
          else this.perPeer.set(key, n);
        },
      },
    };
  }

  /** For tests and metrics. */
  state(): { pending: number; peers: number } {
    return { pending: this.pending, peers: this.perPeer.size };
  }
}
