/**
 * Operator keys and tokens (for the CLI and for tests). An operator owns a key pair; the public
 * half goes into the appliance's JWKS file with kid = the operator's name; the private half stays
 * with the operator (file mode 0600). A token is a short-lived JWT signed with it:
 *   header  { alg: EdDSA | ES256, kid: <operator>, typ: JWT }
 *   claims  { sub: <operator>, aud: <appliance>, iat, exp (<= max lifetime), jti (random, single use),
 *             xks_role: operator | auditor }
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose';
import { assertPrivateFile } from '../config/secrets';

export const ROLE_CLAIM = 'xks_role';
export type Role = 'operator' | 'auditor';
export const ROLES: readonly Role[] = ['operator', 'auditor'];
export type OperatorAlg = 'EdDSA' | 'ES256';
export const OPERATOR_ALGS: readonly OperatorAlg[] = ['EdDSA', 'ES256'];
export const OPERATOR_NAME_RE = /^[A-Za-z0-9._@-]{1,64}$/;

export interface OperatorKeyPair {
  privateJwk: JWK;
  publicJwk: JWK;
}

/** roles: what the key's holder may do on the appliance (the JWKS entry's "xks_roles"). */
export async function generateOperatorKey(name: string, alg: OperatorAlg = 'EdDSA', roles: Role[] = ['operator']): Promise<OperatorKeyPair> {
  if (!OPERATOR_NAME_RE.test(name)) throw new Error('operator name must be 1-64 characters of A-Za-z0-9._@-');
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  const privateJwk = { ...(await exportJWK(privateKey)), kid: name, alg, use: 'sig' };
  const publicJwk = { ...(await exportJWK(publicKey)), kid: name, alg, use: 'sig', xks_roles: roles };
  return { privateJwk, publicJwk };
}

export interface MintOptions {
  privateJwk: JWK;
  role: Role | string;
  audience: string;
  ttlSeconds?: number;
  /** Seconds since the epoch; defaults to now. */
  iat?: number;
  /** Override claims (tests forge bad tokens with this). undefined removes a claim. */
  claims?: Record<string, unknown>;
  kid?: string | undefined;
  jti?: string;
}

export async function mintOperatorToken(o: MintOptions): Promise<string> {
  const alg = (o.privateJwk.alg as string | undefined) ?? (o.privateJwk.crv === 'Ed25519' ? 'EdDSA' : 'ES256');
  const kid = o.kid === undefined && 'kid' in o ? undefined : (o.kid ?? o.privateJwk.kid);
  const key = await importJWK(o.privateJwk, alg);
  const iat = o.iat ?? Math.floor(Date.now() / 1000);
  const payload: Record<string, unknown> = {
    sub: o.privateJwk.kid,
    aud: o.audience,
    iat,
    exp: iat + (o.ttlSeconds ?? 60),
    jti: o.jti ?? crypto.randomBytes(16).toString('base64url'),
    [ROLE_CLAIM]: o.role,
    ...(o.claims ?? {}),
  };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  return new SignJWT(payload).setProtectedHeader({ alg, typ: 'JWT', ...(kid ? { kid } : {}) }).sign(key);
}

export function readPrivateJwk(file: string): JWK {
  // An operator's private key is the operator: readable by others, it is anyone's.
  assertPrivateFile(file, 'the operator private key');
  const jwk = JSON.parse(fs.readFileSync(file, 'utf8')) as JWK;
  if (!jwk.d) throw new Error(`${file} is not a private JWK`);
  if (!jwk.kid) throw new Error(`${file} has no "kid" (the operator name)`);
  return jwk;
}

/** Write the key pair: NAME.private.jwk.json (0600) and NAME.public.jwk.json; optionally add the public key to a JWKS file. */
export function writeOperatorKey(dir: string, pair: OperatorKeyPair, jwksFile?: string): { privateFile: string; publicFile: string } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const name = pair.publicJwk.kid!;
  const privateFile = path.join(dir, `${name}.private.jwk.json`);
  const publicFile = path.join(dir, `${name}.public.jwk.json`);
  fs.writeFileSync(privateFile, JSON.stringify(pair.privateJwk, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  fs.writeFileSync(publicFile, JSON.stringify(pair.publicJwk, null, 2) + '\n', { mode: 0o644, flag: 'wx' });
  if (jwksFile) addToJwks(jwksFile, pair.publicJwk);
  return { privateFile, publicFile };
}

export function addToJwks(jwksFile: string, publicJwk: JWK): void {
  if (publicJwk.d) throw new Error('refusing to put a private key into a JWKS file');
  let jwks: { keys: JWK[] } = { keys: [] };
  if (fs.existsSync(jwksFile)) jwks = JSON.parse(fs.readFileSync(jwksFile, 'utf8')) as { keys: JWK[] };
  if (jwks.keys.some((k) => k.kid === publicJwk.kid)) throw new Error(`${jwksFile} already has a key with kid "${publicJwk.kid}"`);
  jwks.keys.push(publicJwk);
  fs.mkdirSync(path.dirname(jwksFile), { recursive: true, mode: 0o700 });
  const tmp = `${jwksFile}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(jwks, null, 2) + '\n', { mode: 0o644 });
  fs.renameSync(tmp, jwksFile);
}
