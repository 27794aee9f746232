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
    /**
     * For a key block: the HSM key (label) the external key id named when it was engaged. The block
     * stops every id that reaches this HSM key, even if a later reload points the id elsewhere.
     */
    hsmKey: z.string().min(1).optional(),
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

/**
 * One operator's approval of a policy change that loosens (or deletes) a key store's policy: like a
 * lift, it takes effect once `approvalsRequired` distinct operators approved the same change
 * (same document, compared by `digest`) inside the approval window.
 */
const PolicyApproval = z
  .object({
    keyStore: z.string().min(1),
    change: z.enum(['set', 'delete']),
    /** SHA-256 of the canonical JSON of { change, policy }: approvals count only for the same change. */
    digest: z.string().min(1),
    policy: PolicyDoc.optional(),
    by: ActorSchema,
    at: z.string(),
    atMs: z.number(),
    reason: z.string(),
  })
  .strict();
export type PolicyApproval = z.infer<typeof PolicyApproval>;

/**
 * One operator's approval to retire (destroy in the HSM) version `version` of the HSM key
 * `keyLabel`: like a lift, it happens once `approvalsRequired` distinct operators approved the same
 * retirement (same key, version and forceRecentUse) inside the approval window
 * (docs/runbook-key-rotation.md, "Retiring a version").
 */
const RetireApproval = z
  .object({
    keyLabel: z.string().min(1),
    version: z.number().int().min(0),
    /** Approved although the version decrypted within keyVersions.retireQuietDays. */
    forceRecentUse: z.boolean(),
    by: ActorSchema,
    at: z.string(),
    atMs: z.number(),
    reason: z.string(),
  })
  .strict();
export type RetireApproval = z.infer<typeof RetireApproval>;

const HistoryEvent = z
  .object({
    at: z.string(),
    action: z.enum(['engage', 'approve-lift', 'lift', 'policy-set', 'policy-delete', 'policy-approve', 'repair', 'retire-approve', 'retire-approved']),
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
    /** Pending approvals of policy loosenings and deletions (absent in states written before them). */
    policyApprovals: z.array(PolicyApproval).optional(),
    /** Pending approvals of key version retirements (absent in states written before them). */
    retireApprovals: z.array(RetireApproval).optional(),
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
export function applyEngage(s: StateBody, scope: string, by: Actor, reason: string, nowMs: number, hsmKey?: string): StateBody {
  const at = new Date(nowMs).toISOString();
  const blocks = s.blocks.filter((b) => b.scope !== scope);
  blocks.push({ scope, engagedBy: by, engagedAt: at, reason, ...(hsmKey !== undefined ? { hsmKey } : {}) });
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

/** Any change of a key store's policy makes its pending approvals void: they approved another base. */
function withoutPolicyApprovals(s: StateBody, keyStore: string): StateBody {
  if (!s.policyApprovals) return s;
  return { ...s, policyApprovals: s.policyApprovals.filter((a) => a.keyStore !== keyStore) };
}

export function applyPolicySet(s: StateBody, keyStore: string, policy: PolicyDoc, by: Actor, reason: string, nowMs: number, note?: string): StateBody {
  const at = new Date(nowMs).toISOString();
  const revision = (s.policies[keyStore]?.revision ?? 0) + 1;
  const policies = { ...s.policies, [keyStore]: { policy, revision, updatedBy: by, updatedAt: at, reason } };
  const detail = [`revision ${revision}, ${policy.statements.length} statements, default ${policy.defaultDecision}`, note].filter(Boolean).join('; ');
  return withEvent({ ...withoutPolicyApprovals(s, keyStore), policies }, { at, action: 'policy-set', by, keyStore, reason, detail });
}

export function applyPolicyDelete(s: StateBody, keyStore: string, by: Actor, reason: string, nowMs: number, note?: string): StateBody {
  if (!s.policies[keyStore]) throw new ControlError('not-found', `key store ${keyStore} has no policy`);
  const at = new Date(nowMs).toISOString();
  const policies = { ...s.policies };
  delete policies[keyStore];
  return withEvent({ ...withoutPolicyApprovals(s, keyStore), policies }, { at, action: 'policy-delete', by, keyStore, reason, ...(note ? { detail: note } : {}) });
}

export interface PolicyChange {
  keyStore: string;
  change: 'set' | 'delete';
  policy?: PolicyDoc | undefined;
  digest: string;
}

export interface PolicyApprovalOutcome {
  state: StateBody;
  applied: boolean;
  /** Distinct operators whose approvals of this very change currently count (after this one). */
  approvers: string[];
  required: number;
}

/**
 * One operator's approval of a policy loosening or deletion, with the lift's rules: approvals older
 * than the window are dropped, an operator has one pending approval per key store (the newer
 * replaces the older), and only approvals of the same change (digest) count together. When
 * `required` distinct operators approved it inside the window, the change is applied.
 */
export function applyPolicyApproval(s: StateBody, c: PolicyChange, by: Actor, reason: string, nowMs: number, required: number, windowMs: number): PolicyApprovalOutcome {
  if (c.change === 'delete' && !s.policies[c.keyStore]) throw new ControlError('not-found', `key store ${c.keyStore} has no policy`);
  const at = new Date(nowMs).toISOString();
  const fresh = (s.policyApprovals ?? []).filter((a) => nowMs - a.atMs <= windowMs && a.atMs <= nowMs);
  const others = fresh.filter((a) => !(a.keyStore === c.keyStore && a.by.operator === by.operator));
  const mine: PolicyApproval = { keyStore: c.keyStore, change: c.change, digest: c.digest, ...(c.policy ? { policy: c.policy } : {}), by, at, atMs: nowMs, reason };
  const policyApprovals = [...others, mine];
  const approvers = policyApprovals.filter((a) => a.keyStore === c.keyStore && a.digest === c.digest).map((a) => a.by.operator);
  const next = withEvent({ ...s, policyApprovals }, { at, action: 'policy-approve', by, keyStore: c.keyStore, reason, detail: `${c.change} ${c.digest.slice(0, 12)}: ${approvers.length} of ${required} approvals` });
  if (approvers.length < required) return { state: next, applied: false, approvers, required };
  const note = `approved by ${approvers.join(', ')}`;
  const state = c.change === 'set' ? applyPolicySet(next, c.keyStore, c.policy!, by, reason, nowMs, note) : applyPolicyDelete(next, c.keyStore, by, reason, nowMs, note);
  return { state, applied: true, approvers, required };
}

export interface RetireChange {
  keyLabel: string;
  version: number;
  forceRecentUse: boolean;
}

export interface RetireApprovalOutcome {
  state: StateBody;
  /** The quorum approved: the version may now be destroyed (the approvals are cleared). */
  approved: boolean;
  /** Distinct operators whose approvals of this very retirement currently count (after this one). */
  approvers: string[];
  required: number;
}

/** The history's name for a retirement: hsmkey:LABEL#vN (+force). */
export function retireSubject(c: RetireChange): string {
  return `hsmkey:${c.keyLabel}#v${c.version}${c.forceRecentUse ? ' (force-recent-use)' : ''}`;
}

/**
 * One operator's approval to retire a key version, with the lift's rules: approvals older than the
 * window are dropped, an operator has one pending approval per key version (the newer replaces the
 * older), and only approvals of the same retirement (forceRecentUse included) count together. When
 * `required` distinct operators approved it inside the window, the outcome says approved and the
 * approvals are cleared: the caller destroys the version and audits it. The checks against the HSM
 * and the usage counts are the caller's (src/xks/key-retirement.ts), made before every approval.
 */
export function applyRetireApproval(s: StateBody, c: RetireChange, by: Actor, reason: string, nowMs: number, required: number, windowMs: number): RetireApprovalOutcome {
  const at = new Date(nowMs).toISOString();
  const same = (a: RetireApproval) => a.keyLabel === c.keyLabel && a.version === c.version;
  const fresh = (s.retireApprovals ?? []).filter((a) => nowMs - a.atMs <= windowMs && a.atMs <= nowMs);
  const others = fresh.filter((a) => !(same(a) && a.by.operator === by.operator));
  const retireApprovals = [...others, { ...c, by, at, atMs: nowMs, reason }];
  const approvers = retireApprovals.filter((a) => same(a) && a.forceRecentUse === c.forceRecentUse).map((a) => a.by.operator);
  const subject = retireSubject(c);
  const next = withEvent({ ...s, retireApprovals }, { at, action: 'retire-approve', by, scope: subject, reason, detail: `${approvers.length} of ${required} approvals` });
  if (approvers.length < required) return { state: next, approved: false, approvers, required };
  const cleared = { ...next, retireApprovals: retireApprovals.filter((a) => !same(a)) };
  return { state: withEvent(cleared, { at, action: 'retire-approved', by, scope: subject, reason, detail: `approved by ${approvers.join(', ')}` }), approved: true, approvers, required };
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
