/** Signed XKS calls for the key version tests, and a bounded wait for a rotation to show. */
import crypto from 'node:crypto';
import { xksCall, type Credential, type Harness } from './proxy-harness';

export const md = (op: string) => ({ awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: op, kmsRequestId: crypto.randomUUID() });
export const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');

export interface Sealed {
  ciphertext: string;
  initializationVector: string;
  authenticationTag: string;
  ciphertextMetadata?: string;
}

export function xksClient(h: Harness, cred: Credential, prefix = '/ks') {
  return {
    encrypt: (key: string, plaintext: Buffer, aad: Buffer, extra: Record<string, unknown> = {}) => xksCall(h, `${prefix}/kms/xks/v1/keys/${key}/encrypt`, { requestMetadata: md('Encrypt'), plaintext: b64(plaintext), additionalAuthenticatedData: b64(aad), encryptionAlgorithm: 'AES_GCM', ...extra }, { cred }),
    decrypt: (key: string, s: Sealed, aad: Buffer) => xksCall(h, `${prefix}/kms/xks/v1/keys/${key}/decrypt`, { requestMetadata: md('Decrypt'), ...s, additionalAuthenticatedData: b64(aad), encryptionAlgorithm: 'AES_GCM' }, { cred }),
    metadata: (key: string) => xksCall(h, `${prefix}/kms/xks/v1/keys/${key}/metadata`, { requestMetadata: md('DescribeKey') }, { cred }),
  };
}

export function sealedOf(json: any): Sealed {
  return { ciphertext: json.ciphertext, initializationVector: json.initializationVector, authenticationTag: json.authenticationTag, ...(json.ciphertextMetadata !== undefined ? { ciphertextMetadata: json.ciphertextMetadata } : {}) };
}

/** Waits (bounded) until `f` returns a value, polling; for a rotation that shows up at a rescan. */
export async function eventually<T>(f: () => Promise<T | undefined>, what: string, tries = 100): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = await f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`never happened: ${what}`);
}

