/**
 * One record per admin action (who, when, what, scope, reason, outcome), handed to an injectable
 * sink so that the audit log can chain them; by default they go to the application log.
 */
import type { AdminAction } from '../audit/records';
import type { AppLogger } from '../log/logger';

export interface AdminActionRecord {
  time: string;
  /** The operator identity (JWT sub = kid), or the name given to the emergency CLI. */
  operator: string;
  role?: string | undefined;
  /** state-folder: found by the proxy in its state folder, made by nobody it knows (tampering). */
  /** etcd: found in the fleet's control store (fleet mode: a change another member made, a fault, or tampering). */
  via: 'admin-api' | 'local-cli' | 'state-folder' | 'etcd';
  /** e.g. kill-switch.engage, kill-switch.approve-lift, policy.set, policy.delete, credentials.add, credentials.remove. */
  action: string;
  scope?: string | undefined;
  keyStore?: string | undefined;
  accessKeyId?: string | undefined;
  reason?: string | undefined;
  outcome: 'ok' | 'refused' | 'error';
  /** For the audit record; by default derived from the outcome. */
  errorName?: string | undefined;
  status?: number | undefined;
  /** Log-safe detail (never a secret). */
  detail?: string | undefined;
  jti?: string | undefined;
}

export type AdminActionSink = (r: AdminActionRecord) => void;

export function logAdminActions(log: AppLogger): AdminActionSink {
  return (r) => log.info('admin action', { adminAction: r });
}

/** Hands admin actions to the audit stream (src/audit), whose record has no "refused" outcome. */
export function auditAdminActions(audit: { writeAdmin(a: AdminAction): void }): AdminActionSink {
  return (r) =>
    audit.writeAdmin({
      operator: r.operator,
      action: r.action,
      scope: r.scope ?? (r.keyStore ? `keyStore:${r.keyStore}` : undefined),
      reason: r.reason,
      outcome: r.outcome === 'ok' ? 'ok' : 'error',
      errorName: r.outcome === 'ok' ? undefined : (r.errorName ?? (r.outcome === 'refused' ? `Refused${r.status ? ` (HTTP ${r.status})` : ''}` : 'InternalError')),
      detail: [r.detail, `via ${r.via}`, r.role ? `role ${r.role}` : undefined, r.accessKeyId ? `accessKeyId ${r.accessKeyId}` : undefined, r.jti ? `jti ${r.jti}` : undefined].filter(Boolean).join('; '),
    });
}
