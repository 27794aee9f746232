/**
 * Benchmark workloads as pre-signed requests. Each request is a complete, valid SigV4 request
 * (its own kmsRequestId, fresh random plaintext) that the proxy verifies in full; they are signed
 * ahead of time so that the load generator spends its CPU on sending, and cycled during the run
 * (valid for the 5-minute SigV4 window, far longer than a run).
 */
import crypto from 'node:crypto';
import type { Credential } from '../../test/helpers/proxy-harness';
import { signedHeaders } from '../../test/helpers/signer';

export interface PreparedRequest {
  path: string;
  headers: Record<string, string>;
  body: string;
}

export type WorkloadName = 'encrypt32' | 'decrypt32' | 'mixed' | 'encrypt4300' | 'metadata' | 'encrypt32-cdiv';

export const WORKLOADS: Record<WorkloadName, string> = {
  encrypt32: 'Encrypt 32 bytes + 100 bytes AAD (GenerateDataKey shape)',
  'encrypt32-cdiv': 'Encrypt 32 bytes + 100 bytes AAD, CDIV requested (encrypt + proving decrypt)',
  decrypt32: 'Decrypt of the same shape',
  mixed: '50/50 encrypt32 / decrypt32',
  encrypt4300: 'Encrypt 4300 bytes',
  metadata: 'GetKeyMetadata',
};

const rm = (op: string) => ({
  awsPrincipalArn: 'arn:aws:iam::123456789012:role/bench',
  kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsOperation: op,
  kmsRequestId: crypto.randomUUID(),
});

export interface Target {
  host: string;
  prefix: string;
  keyId: string;
  cred: Credential;
}

async function sign(t: Target, op: string, body: object): Promise<PreparedRequest> {
  const path = `${t.prefix}/kms/xks/v1/keys/${t.keyId}/${op}`;
  const text = JSON.stringify(body);
  const headers = await signedHeaders({ host: t.host, path, body: text, accessKeyId: t.cred.accessKeyId, secret: t.cred.secret });
  return { path, headers: { ...headers, 'content-length': String(Buffer.byteLength(text)) }, body: text };
}

function encryptBody(size: number, cdiv: boolean): object {
  return {
    requestMetadata: rm('GenerateDataKey'),
    plaintext: crypto.randomBytes(size).toString('base64'),
    ...(size <= 32 ? { additionalAuthenticatedData: crypto.randomBytes(100).toString('base64') } : {}),
    encryptionAlgorithm: 'AES_GCM',
    ...(cdiv ? { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' } : {}),
  };
}

/** Ciphertexts to decrypt come from the proxy itself (the key never leaves the HSM). */
export type EncryptVia = (req: PreparedRequest) => Promise<{ ciphertext: string; initializationVector: string; authenticationTag: string }>;

export async function prepare(t: Target, w: WorkloadName, count: number, encryptVia: EncryptVia): Promise<PreparedRequest[]> {
  const out: PreparedRequest[] = [];
  const decryptReq = async () => {
    const aad = crypto.randomBytes(100).toString('base64');
    const e = await encryptVia(await sign(t, 'encrypt', { ...encryptBody(32, false), additionalAuthenticatedData: aad }));
    return sign(t, 'decrypt', { requestMetadata: rm('Decrypt'), encryptionAlgorithm: 'AES_GCM', additionalAuthenticatedData: aad, ...e });
  };
  for (let i = 0; i < count; i++) {
    switch (w) {
      case 'encrypt32':
        out.push(await sign(t, 'encrypt', encryptBody(32, false)));
        break;
      case 'encrypt32-cdiv':
        out.push(await sign(t, 'encrypt', encryptBody(32, true)));
        break;
      case 'encrypt4300':
        out.push(await sign(t, 'encrypt', encryptBody(4300, false)));
        break;
      case 'metadata':
        out.push(await sign(t, 'metadata', { requestMetadata: rm('DescribeKey') }));
        break;
      case 'decrypt32':
        out.push(await decryptReq());
        break;
      case 'mixed':
        out.push(i % 2 === 0 ? await sign(t, 'encrypt', encryptBody(32, false)) : await decryptReq());
        break;
    }
  }
  return out;
}
