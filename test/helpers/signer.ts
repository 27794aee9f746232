/**
 * An independent SigV4 signer for tests: AWS's own @smithy/signature-v4, not our verifier's code.
 */
import { Sha256 } from '@aws-crypto/sha256-js';
import { HttpRequest } from '@smithy/protocol-http';
import { SignatureV4 } from '@smithy/signature-v4';

export interface SignInput {
  host: string;
  path: string;
  body: string | Buffer;
  accessKeyId: string;
  secret: string;
  region?: string;
  service?: string;
  date?: Date;
  method?: string;
  headers?: Record<string, string>;
}

export async function signedHeaders(i: SignInput): Promise<Record<string, string>> {
  const signer = new SignatureV4({
    service: i.service ?? 'kms-xks-proxy',
    region: i.region ?? 'us-east-1',
    credentials: { accessKeyId: i.accessKeyId, secretAccessKey: i.secret },
    sha256: Sha256,
  });
  const req = new HttpRequest({
    method: i.method ?? 'POST',
    protocol: 'https:',
    hostname: i.host.split(':')[0]!,
    path: i.path,
    headers: { host: i.host, 'content-type': 'application/json', ...(i.headers ?? {}) },
    body: i.body,
  });
  const signed = await signer.sign(req, { signingDate: i.date ?? new Date() });
  return signed.headers as Record<string, string>;
}

/** Node rawHeaders from a header map, as the server would see them. */
export function toRawHeaders(h: Record<string, string>): string[] {
  return Object.entries(h).flatMap(([k, v]) => [k, v]);
}
