/**
 * The seam between the XKS request path and the appliance's own controls (kill switch, key
 * blocking, allowlists). The request path calls `enter` after SigV4 and field checks and before
 * any HSM call (design.md convention 7), and `done` on the ticket when its HSM work is over, so
 * that engaging a kill switch can wait for the operations that had already passed the gate: once
 * the engage call returns, no HSM operation starts in its scope.
 */
import type { RequestMetadata, XksApi } from '../xks/requests';

export interface GateContext {
  keyStore: string;
  api: XksApi;
  /** Absent for GetHealthStatus. */
  externalKeyId?: string | undefined;
  /**
   * The HSM key (label) the external key id names in the key store this request resolved, i.e. the
   * key its HSM call will use: a key block stops every id that reaches the same HSM key. Absent for
   * GetHealthStatus and for an id the key store does not configure.
   */
  hsmKey?: string | undefined;
  metadata: RequestMetadata;
}

export interface GateTicket {
  /**
   * The key itself is blocked. Only ever true for GetKeyMetadata (it then answers keyStatus
   * DISABLED, so that KMS DescribeKey shows it); Encrypt and Decrypt on a blocked key never get a
   * ticket (InvalidStateException).
   */
  keyBlocked: boolean;
  /** The allowlist statement that allowed the request, for the audit record. */
  allowedBy?: string | undefined;
  /** Call exactly once, when the request's HSM work is over (success or not). */
  done(): void;
}

export interface AccessGate {
  /**
   * Synchronous and cheap (in-memory state). Throws XksError InvalidStateException for a blocked
   * scope and AccessDeniedException (with `statement` set) for an allowlist denial.
   * GetHealthStatus is never subject to allowlists (spec "Authorization").
   */
  enter(ctx: GateContext): GateTicket;
}

/** No controls configured: everything passes. */
export const OPEN_GATE: AccessGate = {
  enter: () => ({ keyBlocked: false, done: () => undefined }),
};
