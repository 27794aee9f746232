/**
 * The proxy's own allowlists (spec "Authorization": secondary authorization on requestMetadata).
 *
 * One policy per key store. A statement has an id (`sid`, unique, named in the log when it decides),
 * an effect, an optional `keys` selector (external key ids, so rules can be per key) and
 * conditions. All conditions of a statement must match (AND); within one condition any pattern may
 * match (OR). Patterns are exact strings or wildcards (`*` any run of characters, `?` one
 * character), compiled once into anchored regular expressions.
 *
 * A field the request does not carry (kmsViaService on a direct call, awsSourceVpc outside a VPC):
 * fail safe. A deny condition on it matches (a deny on optional fields must not fail open), unless
 * the statement says `onAbsentField: "noMatch"`; an allow condition on it never matches (and may not
 * say otherwise).
 *
 * Decision: any matching deny wins; else any matching allow; else the policy's defaultDecision.
 * Order does not matter, which makes "tightening" decidable statement by statement (isTightening).
 * GetHealthStatus is never evaluated (the caller skips it). kmsOperation is free text: an unknown
 * operation is never a validation error, a rule may name it or match it with a wildcard.
 */
import { z } from 'zod';
import type { RequestMetadata, XksApi } from '../xks/requests';

const Pattern = z.string().min(1).max(2048);
const Patterns = z.array(Pattern).min(1).max(256);

export const CONDITION_FIELDS = [
  'awsPrincipalArn',
  'awsPrincipalAccount',
  'kmsKeyArn',
  'kmsKeyAccount',
  'kmsKeyRegion',
  'kmsOperation',
  'kmsViaService',
  'awsSourceVpc',
  'awsSourceVpce',
] as const;
export type ConditionField = (typeof CONDITION_FIELDS)[number];

const Conditions = z
  .object(Object.fromEntries(CONDITION_FIELDS.map((f) => [f, Patterns.optional()])) as Record<ConditionField, z.ZodOptional<typeof Patterns>>)
  .strict();

const Statement = z
  .object({
    sid: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'must be 1-128 characters of A-Za-z0-9._-'),
    effect: z.enum(['allow', 'deny']),
    /** External key ids (patterns allowed) this statement applies to; absent: every key of the store. */
    keys: Patterns.optional(),
    conditions: Conditions.default({}),
    /**
     * What a condition on a field the request does not carry does. Deny statements: "match" (the
     * default: the deny applies) or "noMatch". Allow statements: only "noMatch" (the default).
     */
    onAbsentField: z.enum(['match', 'noMatch']).optional(),
  })
  .strict()
  .refine((s) => !(s.effect === 'allow' && s.onAbsentField === 'match'), { path: ['onAbsentField'], message: 'an allow condition on a field the request does not carry never matches; only deny statements may say "match"' });

export const PolicyDoc = z
  .object({
    /** What happens when no statement matches. "deny" is the default-deny mode. */
    defaultDecision: z.enum(['allow', 'deny']),
    statements: z.array(Statement).max(1000).default([]),
  })
  .strict()
  .superRefine((p, ctx) => {
    const seen = new Set<string>();
    p.statements.forEach((s, i) => {
      if (seen.has(s.sid)) ctx.addIssue({ code: 'custom', path: ['statements', i, 'sid'], message: `duplicate sid "${s.sid}"` });
      seen.add(s.sid);
    });
  });
export type PolicyDoc = z.infer<typeof PolicyDoc>;

export type PolicyValidation = { ok: true; policy: PolicyDoc } | { ok: false; errors: string[] };

/** Validate before anything replaces a policy in force; every problem is reported with its path. */
export function validatePolicy(raw: unknown): PolicyValidation {
  const r = PolicyDoc.safeParse(raw);
  if (r.success) return { ok: true, policy: r.data };
  const errors = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(policy)'}: ${i.message}`);
  // The schema's duplicate-sid check only runs once everything else parsed: report it anyway.
  const statements = (raw as { statements?: unknown } | null)?.statements;
  if (Array.isArray(statements)) {
    const seen = new Set<unknown>();
    statements.forEach((st, i) => {
      const sid = (st as { sid?: unknown } | null)?.sid;
      if (typeof sid !== 'string') return;
      const msg = `statements.${i}.sid: duplicate sid "${sid}"`;
      if (seen.has(sid) && !errors.includes(msg)) errors.push(msg);
      seen.add(sid);
    });
  }
  return { ok: false, errors };
}

/** Names used in the log when no statement matched. */
export const DEFAULT_ALLOW = '(defaultDecision allow)';
export const DEFAULT_DENY = '(defaultDecision deny)';

export interface PolicyRequest {
  api: XksApi;
  externalKeyId?: string | undefined;
  metadata: RequestMetadata;
}

export interface Decision {
  allow: boolean;
  /** The statement responsible, or DEFAULT_ALLOW / DEFAULT_DENY. */
  statement: string;
}

type Matcher = (v: string) => boolean;

/**
 * `*` any run of characters (including ':' and '/'), `?` exactly one; everything else literal.
 * Matched by a greedy scan that backtracks only to the last `*` (O(pattern x value) at worst), not
 * by a regular expression: request metadata is caller-chosen (an IAM role name, say), and patterns
 * like `*a*a*a*b` would make a backtracking regex take exponential time on a 2048-character ARN.
 */
export function compilePattern(p: string): { test(v: string): boolean } {
  return {
    test(v: string): boolean {
      let pi = 0;
      let vi = 0;
      let star = -1;
      let resume = 0;
      while (vi < v.length) {
        const c = p[pi];
        if (c === '?' || (c !== undefined && c !== '*' && c === v[vi])) {
          pi++;
          vi++;
        } else if (c === '*') {
          star = pi++;
          resume = vi;
        } else if (star >= 0) {
          pi = star + 1;
          vi = ++resume;
        } else {
          return false;
        }
      }
      while (p[pi] === '*') pi++;
      return pi === p.length;
    },
  };
}

function compilePatterns(ps: readonly string[]): Matcher {
  const exact = new Set<string>();
  const wild: { test(v: string): boolean }[] = [];
  for (const p of ps) {
    if (p.includes('*') || p.includes('?')) wild.push(compilePattern(p));
    else exact.add(p);
  }
  if (wild.length === 0) return (v) => exact.has(v);
  return (v) => exact.has(v) || wild.some((r) => r.test(v));
}

/** arn:partition:service:region:account:resource -> region and account (undefined if not an ARN). */
function arnPart(arn: string | undefined, index: 3 | 4): string | undefined {
  if (arn === undefined || !arn.startsWith('arn:')) return undefined;
  const parts = arn.split(':', 6);
  return parts.length === 6 ? parts[index] : undefined;
}

const FIELD_VALUE: Record<ConditionField, (m: RequestMetadata) => string | undefined> = {
  awsPrincipalArn: (m) => m.awsPrincipalArn,
  awsPrincipalAccount: (m) => arnPart(m.awsPrincipalArn, 4),
  kmsKeyArn: (m) => m.kmsKeyArn,
  kmsKeyAccount: (m) => arnPart(m.kmsKeyArn, 4),
  kmsKeyRegion: (m) => arnPart(m.kmsKeyArn, 3),
  kmsOperation: (m) => m.kmsOperation,
  kmsViaService: (m) => m.kmsViaService,
  awsSourceVpc: (m) => m.awsSourceVpc,
  awsSourceVpce: (m) => m.awsSourceVpce,
};

interface CompiledStatement {
  sid: string;
  deny: boolean;
  matches(r: PolicyRequest): boolean;
}

function compileStatement(s: PolicyDoc['statements'][number]): CompiledStatement {
  const absentMatches = s.effect === 'deny' && (s.onAbsentField ?? 'match') === 'match';
  const tests: ((r: PolicyRequest) => boolean)[] = [];
  if (s.keys) {
    const m = compilePatterns(s.keys);
    tests.push((r) => r.externalKeyId !== undefined && m(r.externalKeyId));
  }
  for (const f of CONDITION_FIELDS) {
    const ps = s.conditions[f];
    if (!ps) continue;
    const m = compilePatterns(ps);
    const get = FIELD_VALUE[f];
    tests.push((r) => {
      const v = get(r.metadata);
      return v === undefined ? absentMatches : m(v);
    });
  }
  return { sid: s.sid, deny: s.effect === 'deny', matches: (r) => tests.every((t) => t(r)) };
}

export class CompiledPolicy {
  private readonly denies: CompiledStatement[];
  private readonly allows: CompiledStatement[];
  private readonly defaultAllow: boolean;

  constructor(readonly doc: PolicyDoc) {
    const all = doc.statements.map(compileStatement);
    this.denies = all.filter((s) => s.deny);
    this.allows = all.filter((s) => !s.deny);
    this.defaultAllow = doc.defaultDecision === 'allow';
  }

  evaluate(r: PolicyRequest): Decision {
    for (const s of this.denies) if (s.matches(r)) return { allow: false, statement: s.sid };
    for (const s of this.allows) if (s.matches(r)) return { allow: true, statement: s.sid };
    return this.defaultAllow ? { allow: true, statement: DEFAULT_ALLOW } : { allow: false, statement: DEFAULT_DENY };
  }
}

/** The policy in force for a key store without one: allow-all, or deny-all (control.policies). */
export function noPolicy(defaultDecision: 'allow' | 'deny'): PolicyDoc {
  return { defaultDecision, statements: [] };
}

/**
 * True only when `next` allows a subset of what `current` allows, judged conservatively from the
 * documents (not from traffic). Statements compare by their whole content (reordering patterns
 * inside one counts as a change). The decision does not depend on statement order, so:
 *  - every deny statement of `current` must still be in `next` (new ones may be added); then a
 *    request `next` allows is denied by nothing in `current` either;
 *  - if `current` allows by default, that is enough: `current` allows everything it does not deny;
 *  - if `current` denies by default, `next` must deny by default too and bring no allow statement
 *    that `current` lacks (some may be removed).
 * Anything else is a loosening and needs the lift quorum.
 */
export function isTightening(current: PolicyDoc, next: PolicyDoc): boolean {
  const key = (st: PolicyDoc['statements'][number]) => JSON.stringify(st);
  const has = new Set(next.statements.map(key));
  if (!current.statements.filter((st) => st.effect === 'deny').every((st) => has.has(key(st)))) return false;
  if (current.defaultDecision === 'allow') return true;
  const had = new Set(current.statements.map(key));
  return next.defaultDecision === 'deny' && next.statements.filter((st) => st.effect === 'allow').every((st) => had.has(key(st)));
}
