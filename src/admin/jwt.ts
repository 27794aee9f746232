/**
 * Operator authentication on the admin API: short-lived JWTs signed by the operator's own key,
 * verified with jose against the configured JWKS file (public keys only).
 *
 * A token is accepted only if all of these hold (otherwise 401, the reason goes to the log only):
 *  - signature valid under the JWKS key named by the header's kid; alg EdDSA or ES256
 *  - aud names this appliance (admin.audience)
 *  - exp, iat, jti, sub and xks_role present; exp in the future, iat not in the future (both
 *    with admin.clockToleranceSeconds), exp - iat <= admin.maxTokenLifetimeSeconds
 *  - sub equals kid: the operator identity is the key, one key = one person, so one key cannot
 *    speak for two operators in a quorum
 *  - iat not before this listener started (the jti cache is in memory; this stops a token used
 *    before a restart from being replayed after it)
 *  - jti never seen before (remembered until exp; a full cache refuses new tokens, fail closed)
 *  - xks_role is operator or auditor (role checks per endpoint are the server's: 403)
 * Roles are bound to keys by the appliance, not asserted by the token alone: a JWKS entry lists
 * the roles its holder may take in "xks_roles" (absent: ["auditor"], least privilege). A token
 * claiming a role its key does not have is answered 403.
 * The JWKS file is re-read when it changes; if it becomes unreadable, every token is refused
 * until it is fixed (a removed key must never keep working because of a typo).
 */
import fs from 'node:fs';
import { createLocalJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import type { AppLogger } from '../log/logger';
import { OPERATOR_ALGS, ROLE_CLAIM, ROLES, type Role } from './tokens';

export interface OperatorIdentity {
  operator: string;
  role: Role;
  jti: string;
  exp: number;
}

export class AuthError extends Error {
  constructor(
    readonly status: 401 | 403 | 503,
    /** Log-only detail. */
    readonly detail: string,
  ) {
    super(status === 401 ? 'unauthorized' : status === 403 ? 'forbidden' : 'unavailable');
  }
}

export interface OperatorAuthOptions {
  jwksFile: string;
  audience: string;
  maxTokenLifetimeSeconds: number;
  clockToleranceSeconds: number;
  replayCacheSize: number;
  log: AppLogger;
  /**
   * Fleet mode: records the token id in the fleet's shared replay set (etcd), true the first time
   * it is seen anywhere in the fleet. Replaces the in-memory cache; a store that cannot answer
   * refuses the token (503, fail closed).
   */
  claimJti?: (id: string, expMs: number) => Promise<boolean>;
  now?: () => number;
}

const JTI_RE = /^[A-Za-z0-9._~+/=-]{16,128}$/;

/** The custom JWK member naming the roles a key's holder may take. */
export const KEY_ROLES_MEMBER = 'xks_roles';

export function keyRoles(k: Record<string, unknown>): Role[] {
  const r = k[KEY_ROLES_MEMBER];
  return Array.isArray(r) ? (r as Role[]) : ['auditor'];
}

export function loadJwks(file: string): JSONWebKeySet {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
  if (typeof raw !== 'object' || raw === null || !Array.isArray((raw as { keys?: unknown }).keys)) throw new Error('not a JWKS ({"keys": [...]})');
  const keys = (raw as JSONWebKeySet).keys;
  const kids = new Set<string>();
  keys.forEach((k, i) => {
    if ('d' in k || 'p' in k || 'k' in k) throw new Error(`keys[${i}] holds private or symmetric key material; a JWKS here must hold public keys only`);
    if (typeof k.kid !== 'string' || k.kid.length === 0) throw new Error(`keys[${i}] has no kid (the operator name)`);
    if (kids.has(k.kid)) throw new Error(`duplicate kid "${k.kid}"`);
    kids.add(k.kid);
    const roles = (k as unknown as Record<string, unknown>)[KEY_ROLES_MEMBER];
    if (roles !== undefined && (!Array.isArray(roles) || roles.length === 0 || roles.some((r) => !(ROLES as readonly unknown[]).includes(r)))) throw new Error(`keys[${i}] (${k.kid}): ${KEY_ROLES_MEMBER} must be a non-empty list of ${ROLES.join(', ')}`);
    if (!((k.kty === 'OKP' && k.crv === 'Ed25519') || (k.kty === 'EC' && k.crv === 'P-256'))) throw new Error(`keys[${i}] (${k.kid}): only Ed25519 (EdDSA) and P-256 (ES256) keys are accepted`);
  });
  return { keys };
}

export class OperatorAuth {
  private jwks: JWTVerifyGetKey | undefined;
  private roles = new Map<string, Role[]>();
  private jwksError: string | undefined;
  private jwksStat = '';
  private readonly used = new Map<string, number>();
  private readonly now: () => number;
  private readonly startedAtS: number;

  constructor(private readonly o: OperatorAuthOptions) {
    this.now = o.now ?? Date.now;
    this.startedAtS = Math.floor(this.now() / 1000);
    this.refreshJwks(true);
  }

  /** Throws at start-up so that a broken JWKS stops the appliance with a clear message. */
  private refreshJwks(strict = false): void {
    let st: string;
    try {
      const s = fs.statSync(this.o.jwksFile);
      st = `${s.ino}:${s.size}:${s.mtimeMs}`;
    } catch (e) {
      st = (e as NodeJS.ErrnoException).code ?? 'error';
    }
    if (st === this.jwksStat) return;
    this.jwksStat = st;
    try {
      const set = loadJwks(this.o.jwksFile);
      this.jwks = createLocalJWKSet(set);
      this.roles = new Map(set.keys.map((k) => [k.kid!, keyRoles(k as unknown as Record<string, unknown>)]));
      this.jwksError = undefined;
      this.o.log.info('operator keys loaded', { jwksFile: this.o.jwksFile, operators: set.keys.map((k) => k.kid) });
    } catch (e) {
      this.jwks = undefined;
      this.jwksError = `${this.o.jwksFile}: ${(e as Error).message}`;
      if (strict) throw new Error(`admin JWKS ${this.jwksError}`);
      this.o.log.error('operator JWKS unusable: every admin token is refused until it is fixed', { reason: this.jwksError });
    }
  }

  async verify(authorization: string | undefined): Promise<OperatorIdentity> {
    if (!authorization || !/^Bearer [A-Za-z0-9._~+/=-]+$/.test(authorization)) throw new AuthError(401, 'missing or malformed Authorization: Bearer header');
    const token = authorization.slice('Bearer '.length);
    this.refreshJwks();
    if (!this.jwks) throw new AuthError(503, `operator keys unavailable: ${this.jwksError}`);
    let kid: string | undefined;
    try {
      kid = decodeProtectedHeader(token).kid;
    } catch {
      throw new AuthError(401, 'not a JWS');
    }
    if (!kid) throw new AuthError(401, 'token header has no kid');
    const nowMs = this.now();
    let payload: Record<string, unknown>;
    try {
      const r = await jwtVerify(token, this.jwks, {
        audience: this.o.audience,
        algorithms: [...OPERATOR_ALGS],
        clockTolerance: this.o.clockToleranceSeconds,
        currentDate: new Date(nowMs),
        requiredClaims: ['exp', 'iat', 'jti', 'sub', ROLE_CLAIM],
        // Also rejects an iat in the future (beyond the tolerance).
        maxTokenAge: this.o.maxTokenLifetimeSeconds,
      });
      payload = r.payload as Record<string, unknown>;
    } catch (e) {
      throw new AuthError(401, describeJoseError(e));
    }
    const { sub, iat, exp, jti } = payload as { sub: unknown; iat: number; exp: number; jti: unknown };
    const role = payload[ROLE_CLAIM];
    if (sub !== kid) throw new AuthError(401, `sub ${JSON.stringify(sub)} is not the signing key's operator ${kid}`);
    if (exp - iat > this.o.maxTokenLifetimeSeconds) throw new AuthError(401, `token lifetime ${exp - iat} s exceeds ${this.o.maxTokenLifetimeSeconds} s`);
    if (iat < this.startedAtS) throw new AuthError(401, 'token issued before this admin listener started');
    if (typeof jti !== 'string' || !JTI_RE.test(jti)) throw new AuthError(401, 'jti must be 16-128 URL-safe characters');
    if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) throw new AuthError(401, `unknown ${ROLE_CLAIM} ${JSON.stringify(role)}`);
    if (this.o.claimJti) await this.claimShared(`${kid}\u0000${jti}`, exp * 1000);
    else this.useJti(`${kid}\u0000${jti}`, exp * 1000, nowMs);
    if (!(this.roles.get(kid) ?? []).includes(role as Role)) throw new AuthError(403, `key ${kid} may not take the role ${role} (its ${KEY_ROLES_MEMBER}: ${(this.roles.get(kid) ?? []).join(', ')})`);
    return { operator: kid, role: role as Role, jti, exp };
  }

  private async claimShared(key: string, expMs: number): Promise<void> {
    let first: boolean;
    try {
      first = await this.o.claimJti!(key, expMs + this.o.clockToleranceSeconds * 1000);
    } catch (e) {
      throw new AuthError(503, `the fleet's token replay set cannot be reached; refusing tokens until it can (${(e as Error).message})`);
    }
    if (!first) throw new AuthError(401, 'jti already used (replay, on this or another member of the fleet)');
  }

  private useJti(key: string, expMs: number, nowMs: number): void {
    const graceMs = this.o.clockToleranceSeconds * 1000;
    if (this.used.has(key)) throw new AuthError(401, 'jti already used (replay)');
    if (this.used.size >= this.o.replayCacheSize) {
      for (const [k, e] of this.used) if (e + graceMs < nowMs) this.used.delete(k);
      if (this.used.size >= this.o.replayCacheSize) throw new AuthError(503, 'jti replay cache full; refusing new tokens until entries expire');
    }
    this.used.set(key, expMs);
  }
}

function describeJoseError(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return `expired or too old: ${e.message}`;
  if (e instanceof joseErrors.JWTClaimValidationFailed) return `claim ${e.claim} invalid: ${e.message}`;
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature verification failed';
  if (e instanceof joseErrors.JWKSNoMatchingKey) return 'no operator key with this kid';
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return `algorithm not allowed: ${e.message}`;
  if (e instanceof joseErrors.JOSEError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
