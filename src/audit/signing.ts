/**
 * The audit signing key and checkpoint signatures: compact JWS (RFC 7515), EdDSA over Ed25519
 * (RFC 8037) or ES256 over P-256. The appliance holds the private JWK; the auditor holds the public
 * half and verifies with any JOSE library (`xks-proxy audit verify` uses jose).
 *
 * Checkpoints are signed synchronously with node:crypto (jose only signs asynchronously), so that a
 * checkpoint takes its place in the hash chain at the moment it is made, including on the
 * rotation and shutdown paths; the result is ordinary JWS, which the verifier checks with jose.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { compactVerify, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose';
import { assertPrivateFile } from '../config/secrets';

export type CheckpointAlg = 'EdDSA' | 'ES256';
export const CHECKPOINT_JWS_TYPE = 'xks-audit-checkpoint';

export interface SigningKey {
  alg: CheckpointAlg;
  /** RFC 7638 thumbprint of the public key. */
  kid: string;
  key: crypto.KeyObject;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

function algOf(jwk: JWK): CheckpointAlg {
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return 'EdDSA';
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  throw new Error('the audit signing key must be an Ed25519 (OKP) or P-256 (EC) JWK');
}

/** RFC 7638: SHA-256 over the required public members in lexicographic order. */
export function jwkThumbprint(jwk: JWK): string {
  const members = jwk.kty === 'OKP' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x } : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return b64url(crypto.createHash('sha256').update(JSON.stringify(members)).digest());
}

export function loadSigningKey(file: string): SigningKey {
  // Whoever can read it can forge every checkpoint.
  assertPrivateFile(file, 'the audit signing key');
  let jwk: JWK;
  try {
    jwk = JSON.parse(fs.readFileSync(file, 'utf8')) as JWK;
  } catch (e) {
    throw new Error(`audit signing key ${file}: ${(e as NodeJS.ErrnoException).code ?? 'not a JSON JWK'}`);
  }
  if (typeof jwk.d !== 'string') throw new Error(`audit signing key ${file}: not a private JWK (no "d")`);
  const alg = algOf(jwk);
  const key = crypto.createPrivateKey({ key: jwk as crypto.JsonWebKey, format: 'jwk' });
  return { alg, kid: jwkThumbprint(jwk), key };
}

/** A compact JWS over the JSON of `payload`. */
export function signCompact(k: SigningKey, payload: unknown): string {
  const input = `${b64url(JSON.stringify({ alg: k.alg, kid: k.kid, typ: CHECKPOINT_JWS_TYPE }))}.${b64url(JSON.stringify(payload))}`;
  const sig = k.alg === 'EdDSA' ? crypto.sign(null, Buffer.from(input), k.key) : crypto.sign('sha256', Buffer.from(input), { key: k.key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

export interface VerificationKey {
  alg: CheckpointAlg;
  kid: string;
  verify(jws: string): Promise<{ payload: unknown; kid: string | undefined }>;
}

/** The auditor's side: a public JWK file, verified with jose. */
export async function loadVerificationKey(file: string): Promise<VerificationKey> {
  const jwk = JSON.parse(fs.readFileSync(file, 'utf8')) as JWK;
  const { d: _private, ...pub } = jwk;
  const alg = algOf(pub);
  const key = await importJWK(pub, alg);
  return {
    alg,
    kid: jwkThumbprint(pub),
    async verify(jws) {
      const r = await compactVerify(jws, key, { algorithms: [alg] });
      return { payload: JSON.parse(Buffer.from(r.payload).toString('utf8')) as unknown, kid: r.protectedHeader.kid };
    },
  };
}

/** `xks-proxy audit keygen`: a new Ed25519 (or P-256) pair as JWK files; never overwrites. */
export async function generateSigningKeyPair(privateFile: string, publicFile: string, alg: CheckpointAlg = 'EdDSA'): Promise<{ kid: string }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  const priv = await exportJWK(privateKey);
  const pub = await exportJWK(publicKey);
  const kid = jwkThumbprint(pub);
  fs.mkdirSync(path.dirname(privateFile), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.dirname(publicFile), { recursive: true, mode: 0o700 });
  fs.writeFileSync(privateFile, JSON.stringify({ ...priv, alg, kid, use: 'sig' }, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  try {
    fs.writeFileSync(publicFile, JSON.stringify({ ...pub, alg, kid, use: 'sig' }, null, 2) + '\n', { mode: 0o644, flag: 'wx' });
  } catch (e) {
    fs.rmSync(privateFile, { force: true });
    throw e;
  }
  return { kid };
}
