/**
 * SigV4 credentials for a key store (spec Appendix A) and the KMS console proxy configuration
 * file (spec "XKS proxy configuration in AWS KMS console").
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ACCESS_KEY_ID_RE, SECRET_RE, XKS_API_SUFFIX, type Config } from '../config/schema';
import { SECRET_FILE_SUFFIX } from './key-stores';
import { fsyncDir } from '../util/durable-fs';

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** 26 characters of A-Z2-7 from 130 random bits: reveals nothing about the secret. */
export function generateAccessKeyId(): string {
  const bytes = crypto.randomBytes(26);
  // 256 is a multiple of 32, so taking the low 5 bits of each byte is unbiased.
  return [...bytes].map((b) => BASE32[b & 31]).join('');
}

/** Base64 of 32 random bytes: 44 characters, 256 bits of entropy. */
export function generateSecret(): string {
  return crypto.randomBytes(32).toString('base64');
}

export interface KmsProxyConfiguration {
  XksProxyUriPath: string;
  XksProxyAuthenticationCredential: { AccessKeyId: string; RawSecretAccessKey: string };
}

export function kmsProxyConfiguration(pathPrefix: string, accessKeyId: string, secret: string): KmsProxyConfiguration {
  return { XksProxyUriPath: pathPrefix + XKS_API_SUFFIX, XksProxyAuthenticationCredential: { AccessKeyId: accessKeyId, RawSecretAccessKey: secret } };
}

export function newCredential(config: Readonly<Config>, keyStoreName: string, outFile?: string): { accessKeyId: string; secretFile: string; kmsConfigJson: string } {
  const ks = config.keyStores.find((k) => k.name === keyStoreName);
  if (!ks) throw new Error(`no key store named "${keyStoreName}" (have: ${config.keyStores.map((k) => k.name).join(', ')})`);
  if (!ks.credentialsDir) throw new Error(`key store "${keyStoreName}" has no credentialsDir; add one to the config, or add an inline credential by hand`);
  const accessKeyId = generateAccessKeyId();
  const secret = generateSecret();
  if (!ACCESS_KEY_ID_RE.test(accessKeyId) || !SECRET_RE.test(secret)) throw new Error('generated credential does not match the spec format');
  fs.mkdirSync(ks.credentialsDir, { recursive: true, mode: 0o700 });
  const secretFile = path.join(ks.credentialsDir, accessKeyId + SECRET_FILE_SUFFIX);
  // Write then rename, so that the proxy's re-read never sees a half-written secret.
  const tmp = `${secretFile}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, secret + '\n', { mode: 0o600, flag: 'wx' });
  fs.renameSync(tmp, secretFile);
  fsyncDir(ks.credentialsDir);
  const kmsConfigJson = JSON.stringify(kmsProxyConfiguration(ks.pathPrefix, accessKeyId, secret), null, 2);
  if (outFile) fs.writeFileSync(outFile, kmsConfigJson + '\n', { mode: 0o600 });
  return { accessKeyId, secretFile, kmsConfigJson };
}

export function listCredentials(config: Readonly<Config>): { keyStore: string; uriPath: string; accessKeyIds: string[] }[] {
  return config.keyStores.map((ks) => {
    const ids = ks.credentials.map((c) => c.accessKeyId);
    if (ks.credentialsDir && fs.existsSync(ks.credentialsDir)) {
      for (const f of fs.readdirSync(ks.credentialsDir)) if (f.endsWith(SECRET_FILE_SUFFIX)) ids.push(f.slice(0, -SECRET_FILE_SUFFIX.length));
    }
    return { keyStore: ks.name, uriPath: ks.pathPrefix + XKS_API_SUFFIX, accessKeyIds: ids };
  });
}
