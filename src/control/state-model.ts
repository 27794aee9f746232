/**
 * The durable control state and the pure rules that change it (no I/O, clock passed in):
 * engage, approve a lift (quorum of distinct operators inside a time window), policy changes,
 * repair. Every change appends a history event naming who, when, the scope and the reason.
 */
import { z } from 'zod';
import { PolicyDoc } from './policy';

/** Who did something. `operator` is the operator identity (the key id of their admin key). */
export interface Actor {
  operator: string;
  /** admin-api (JWT-authenticated), local-cli (emergency command on the appliance). */
  via: 'admin-api' | 'local-cli';
  /** For local-cli: the OS user that ran the command. */
  osUser?: string | undefined;
}

const ActorSchema = z
  .object({ operator: z.string().min(1).max(256), via: z.enum(['admin-api', 'local-cli']), osUser: z.string().max(256).optional() })
  .strict();

const Block = z
  .object({
    scope: z.string().min(1),
    engagedBy: ActorSchema,
    engagedAt: z.string(),
    reason: z.string(),
  })
  .strict();
export type Block = z.infer<typeof Block>;

const Approval = z
  .object({
    scope: z.string().min(1),
    by: ActorSchema,
    at: z.string(),
    /** Epoch ms of `at`, so window checks never parse dates. */
    atMs: z.number(),
    reason: z.string(),
  })
  .strict();
export type Approval = z.infer<typeof Approval>;

const StoredPolicy = z
  .object({
    policy: PolicyDoc,
    revision: z.number().int().min(1),
    updatedBy: ActorSchema,
    updatedAt: z.string(),
    reason: z.string(),
  })
  .strict();
export type StoredPolicy = z.infer<typeof StoredPolicy>;

const HistoryEvent = z
  .object({
    at: z.string(),
    action: z.enum(['engage', 'approve-lift', 'lift', 'policy-set', 'policy-delete', 'repair']),
    by: ActorSchema,
    scope: z.string().optional(),
    keyStore: z.string().optional(),
    reason: z.string(),
    detail: z.string().optional(),
  })
  .strict();
export type HistoryEvent = z.infer<typeof HistoryEvent>;

export const StateBody = z
  .object({
    blocks: z.array(Block),
    approvals: z.array(Approval),
    policies: z.record(z.string(), StoredPolicy),
    /** The most recent events (older ones are in the audit log). */
    history: z.array(HistoryEvent),
  })
  .strict();
export type StateBody = z.infer<typeof StateBody>;

export const HISTORY_LIMIT = 500;
export const REASON_MAX = 1024;

export function emptyState(): StateBody {
  return { blocks: [], approvals: [], policies: {}, history: [] };
}

export class ControlError extends Error {
  constructor(
    readonly code: 'not-blocked' | 'not-found' | 'conflict' | 'fail-closed' | 'invalid' | 'lock-timeout' | 'policy-invalid',
    message: string,
    readonly errors: string[] = [],
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

export function checkReason(reason: unknown): string {
  if (typeof reason !== 'string' || reason.trim().length === 0) throw new ControlError('invalid', 'a reason is required');
  if (reason.length > REASON_MAX) throw new ControlError('invalid', `the reason is longer than ${REASON_MAX} characters`);
  return reason;
}

function withEvent(s: StateBody, e: HistoryEvent): StateBody {
  const history = [...s.history, e];
  return { ...s, history: history.length > HISTORY_LIMIT ? history.slice(history.length - HISTORY_LIMIT) : history };
}

/** Engaging needs one authorised operator. Re-engaging a blocked scope restarts its lift quorum. */
export function applyEngage(s: StateBody, scope: string, by: Actor, reason: string, nowMs: number): StateBody {
  const at = new Date(nowMs).toISOString();
  const blocks = s.blocks.filter((b) => b.scope !== scope);
  blocks.push({ scope, engagedBy: by, engagedAt: at, reason });
  const approvals = s.approvals.filter((a) => a.scope !== scope);
  return withEvent({ ...s, blocks, approvals }, { at, action: 'engage', by, scope, reason });
}

export interface ApprovalOutcome {
  state: StateBody;
  lifted: boolean;
  /** Distinct operators whose approvals currently count (after this one). */
  approvers: string[];
  required: number;
}

/**
 * One operator's approval to lift `scope`. Approvals older than the window are dropped; the same
 * operator approving twice counts once (the newer approval replaces the older). When `required`
 * distinct operators have approved inside the window, the block is lifted and the approvals cleared.
 */
export function applyApproval(s: StateBody, scope: string, by: Actor, reason: string, nowMs: number, required: number, windowMs: number): ApprovalOutcome {
  if (!s.blocks.some((b) => b.scope === scope)) throw new ControlError('not-blocked', `scope ${scope} is not blocked`);
  const at = new Date(nowMs).toISOString();
  const fresh = s.approvals.filter((a) => nowMs - a.atMs <= windowMs && a.atMs <= nowMs);
  const others = fresh.filter((a) => !(a.scope === scope && a.by.operator === by.operator));
  const approvals = [...others, { scope, by, at, atMs: nowMs, reason }];
  const approvers = approvals.filter((a) => a.scope === scope).map((a) => a.by.operator);
  let next = withEvent({ ...s, approvals }, { at, action: 'approve-lift', by, scope, reason, detail: `${approvers.length} of ${required} approvals` });
  if (approvers.length < required) return { state: next, lifted: false, approvers, required };
  next = {
    ...next,
    blocks: next.blocks.filter((b) => b.scope !== scope),
    approvals: next.approvals.filter((a) => a.scope !== scope),
  };
  next = withEvent(next, { at, action: 'lift', by, scope, reason, detail: `approved by ${approvers.join(', ')}` });
  return { state: next, lifted: true, approvers, required };
}

export function applyPolicySet(s: StateBody, keyStore: string, policy: PolicyDoc, by: Actor, reason: string, nowMs: number): StateBody {
  const at = new Date(nowMs).toISOString();
  const revision = (s.policies[keyStore]?.revision ?? 0) + 1;
  const policies = { ...s.policies, [keyStore]: { policy, revision, updatedBy: by, updatedAt: at, reason } };
  return withEvent({ ...s, policies }, { at, action: 'policy-set', by, keyStore, reason, detail: `revision ${revision}, ${policy.statements.length} statements, default ${policy.defaultDecision}` });
}

export function applyPolicyDelete(s: StateBody, keyStore: string, by: Actor, reason: string, nowMs: number): StateBody {
  const at = new Date(nowMs).toISOString();
  const policies = { ...s.policies };
  delete policies[keyStore];
  return withEvent({ ...s, policies }, { at, action: 'policy-delete', by, keyStore, reason });
}

/**
 * Repair after a fail-closed start: the new state (empty, or the verified backup) always carries a
 * proxy-scope block, so that repairing never opens the proxy by itself; lifting that block takes
 * the normal quorum.
 */
export function applyRepair(base: StateBody, by: Actor, reason: string, nowMs: number, detail: string): StateBody {
  const at = new Date(nowMs).toISOString();
  const blocks = base.blocks.filter((b) => b.scope !== 'proxy');
  blocks.push({ scope: 'proxy', engagedBy: by, engagedAt: at, reason: `repair: ${reason}` });
  const approvals = base.approvals.filter((a) => a.scope !== 'proxy');
  return withEvent({ ...base, blocks, approvals }, { at, action: 'repair', by, scope: 'proxy', reason, detail });
}
