/**
 * What goes into an audit record. Built from allow-lists, never by copying a request: no
 * plaintext, ciphertext, AAD, PIN, secret, signature, token or Authorization header can reach it.
 */
import type { RequestLog } from '../log/request-log';
import { clip } from '../log/request-record';

export { MAX_FIELD, clip, xksFields } from '../log/request-record';

/** One operator action on the admin API (kill switch, key blocking, policy, credentials...). */
export interface AdminAction {
  /** Who: the authenticated operator (e.g. the admin token's subject). */
  operator: string;
  /** What, e.g. "killswitch.engage", "key.block", "policy.update". */
  action: string;
  /** On what, e.g. "proxy", "keyStore:tenant-a", "key:tenant-a/k1". */
  scope?: string | undefined;
  /** The reason the operator gave. */
  reason?: string | undefined;
  /** refused: the action was not allowed (authorization, quorum, validation); error: it failed. */
  outcome: 'ok' | 'refused' | 'error';
  errorName?: string | undefined;
  /** HTTP status the admin API answered, if any. */
  status?: number | undefined;
  /** Log-safe detail (never a token or secret). */
  detail?: string | undefined;
  /** The operator's role, and the channel (e.g. "admin-api", "local-cli"). */
  role?: string | undefined;
  via?: string | undefined;
  /** The admin token's id (jti), to correlate with the token issuer; never the token itself. */
  tokenId?: string | undefined;
  remoteAddress?: string | undefined;
  latencyMs?: number | undefined;
}

/** The audit stream: one record per XKS request (RequestLog.write) and one per admin action. */
export interface AuditSink extends RequestLog {
  writeAdmin(action: AdminAction): void;
}

export function adminFields(a: Readonly<AdminAction>): Record<string, unknown> {
  return {
    operator: clip(a.operator),
    action: clip(a.action),
    scope: clip(a.scope),
    reason: clip(a.reason),
    outcome: a.outcome,
    errorName: a.errorName,
    status: a.status,
    detail: clip(a.detail),
    role: clip(a.role),
    via: clip(a.via),
    tokenId: clip(a.tokenId),
    remoteAddress: clip(a.remoteAddress),
    latencyMs: a.latencyMs,
  };
}
