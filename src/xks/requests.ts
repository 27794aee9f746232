/**
 * Request bodies of the four APIs (spec "API operations"): parsed from the raw JSON after SigV4
 * succeeded, checked field by field, Base64 decoded strictly. Unknown fields are tolerated
 * (spec Appendix B: KMS may add requestMetadata fields) and unknown kmsOperation values are
 * accepted (spec: MUST NOT be rejected as invalid).
 *
 * Error choice, one rule for every field:
 *  - body not JSON, a field of the wrong type, a required field missing -> ValidationException
 *  - decrypt: ciphertext, IV or tag that is empty, not Base64 or of the wrong length ->
 *    InvalidCiphertextException (the spec's row for "corrupted, missing, or otherwise invalid")
 *  - a well-formed value we do not implement (another algorithm) or a size beyond our limits ->
 *    UnsupportedOperationException (the spec's row for "exceeded the maximum size supported")
 */
import { XksError, type ErrorName } from '../errors/xks-error';
import { MAX_CIPHERTEXT_METADATA_BYTES } from './aad';
import { CDIV_ALGORITHM } from './cdiv';

export type XksApi = 'GetKeyMetadata' | 'Encrypt' | 'Decrypt' | 'GetHealthStatus';

export interface RequestMetadata {
  kmsRequestId: string;
  kmsOperation: string;
  awsPrincipalArn?: string | undefined;
  kmsKeyArn?: string | undefined;
  kmsViaService?: string | undefined;
  awsSourceVpc?: string | undefined;
  awsSourceVpce?: string | undefined;
}

export interface EncryptInput {
  plaintext: Buffer;
  aad: Buffer | undefined;
  cdivRequested: boolean;
}

export interface DecryptInput {
  ciphertext: Buffer;
  iv: Buffer;
  tag: Buffer;
  aad: Buffer | undefined;
  ciphertextMetadata: Buffer | undefined;
}

export interface Limits {
  maxPlaintextBytes: number;
  maxAadBytes: number;
}

const ENCRYPTION_ALGORITHM = 'AES_GCM';
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function parseJsonBody(body: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    throw new XksError('ValidationException', 'The request body is not valid JSON.');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new XksError('ValidationException', 'The request body must be a JSON object.');
  }
  return v as Record<string, unknown>;
}

function optionalString(obj: Record<string, unknown>, field: string, where: string): string | undefined {
  const v = obj[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new XksError('ValidationException', `${where}${field} must be a string.`);
  return v;
}

function requiredString(obj: Record<string, unknown>, field: string, where: string): string {
  const v = optionalString(obj, field, where);
  if (v === undefined) throw new XksError('ValidationException', `${where}${field} is required.`);
  return v;
}

/** Which requestMetadata fields each API requires (spec, each API's "Request Payload Parameters"). */
const REQUIRED_METADATA: Record<XksApi, readonly (keyof RequestMetadata)[]> = {
  GetHealthStatus: ['kmsRequestId', 'kmsOperation'],
  GetKeyMetadata: ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn'],
  Encrypt: ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn', 'kmsKeyArn'],
  Decrypt: ['kmsRequestId', 'kmsOperation', 'awsPrincipalArn', 'kmsKeyArn'],
};
const METADATA_FIELDS: readonly (keyof RequestMetadata)[] = [
  'kmsRequestId', 'kmsOperation', 'awsPrincipalArn', 'kmsKeyArn', 'kmsViaService', 'awsSourceVpc', 'awsSourceVpce',
];

export function parseRequestMetadata(body: Record<string, unknown>, api: XksApi): RequestMetadata {
  const rm = body.requestMetadata;
  if (rm === undefined || rm === null) throw new XksError('ValidationException', 'requestMetadata is required.');
  if (typeof rm !== 'object' || Array.isArray(rm)) throw new XksError('ValidationException', 'requestMetadata must be an object.');
  const obj = rm as Record<string, unknown>;
  const required = REQUIRED_METADATA[api];
  const out: Partial<RequestMetadata> = {};
  for (const f of METADATA_FIELDS) {
    out[f] = required.includes(f) ? requiredString(obj, f, 'requestMetadata.') : optionalString(obj, f, 'requestMetadata.');
  }
  return out as RequestMetadata;
}

/** Strict Base64 (RFC 4648 section 4, padded): Node's decoder alone would skip bad characters. */
function decodeBase64(value: string, field: string, errorName: ErrorName): Buffer {
  if (value.length % 4 !== 0 || !BASE64_RE.test(value)) throw new XksError(errorName, `${field} is not valid Base64.`);
  return Buffer.from(value, 'base64');
}

function checkAlgorithm(body: Record<string, unknown>): void {
  const alg = requiredString(body, 'encryptionAlgorithm', '');
  if (alg !== ENCRYPTION_ALGORITHM) {
    throw new XksError('UnsupportedOperationException', `encryptionAlgorithm must be ${ENCRYPTION_ALGORITHM}.`);
  }
}

function optionalAad(body: Record<string, unknown>, limits: Limits): Buffer | undefined {
  const s = optionalString(body, 'additionalAuthenticatedData', '');
  if (s === undefined) return undefined;
  const aad = decodeBase64(s, 'additionalAuthenticatedData', 'ValidationException');
  if (aad.length > limits.maxAadBytes) {
    throw new XksError('UnsupportedOperationException', `additionalAuthenticatedData is longer than ${limits.maxAadBytes} bytes.`);
  }
  return aad.length === 0 ? undefined : aad;
}

export function parseEncrypt(body: Record<string, unknown>, limits: Limits): EncryptInput {
  checkAlgorithm(body);
  const plaintext = decodeBase64(requiredString(body, 'plaintext', ''), 'plaintext', 'ValidationException');
  if (plaintext.length === 0) throw new XksError('ValidationException', 'plaintext must not be empty.');
  if (plaintext.length > limits.maxPlaintextBytes) {
    throw new XksError('UnsupportedOperationException', `plaintext is longer than ${limits.maxPlaintextBytes} bytes.`);
  }
  const cdivAlg = optionalString(body, 'ciphertextDataIntegrityValueAlgorithm', '');
  if (cdivAlg !== undefined && cdivAlg !== CDIV_ALGORITHM) {
    throw new XksError('UnsupportedOperationException', `ciphertextDataIntegrityValueAlgorithm must be ${CDIV_ALGORITHM}.`);
  }
  return { plaintext, aad: optionalAad(body, limits), cdivRequested: cdivAlg !== undefined };
}

export function parseDecrypt(body: Record<string, unknown>, limits: Limits): DecryptInput {
  checkAlgorithm(body);
  const material = (field: string): Buffer => {
    const v = body[field];
    if (v !== undefined && v !== null && typeof v !== 'string') throw new XksError('ValidationException', `${field} must be a string.`);
    if (typeof v !== 'string' || v.length === 0) throw new XksError('InvalidCiphertextException', `${field} is missing.`);
    return decodeBase64(v, field, 'InvalidCiphertextException');
  };
  const ciphertext = material('ciphertext');
  if (ciphertext.length > limits.maxPlaintextBytes) {
    throw new XksError('UnsupportedOperationException', `ciphertext is longer than ${limits.maxPlaintextBytes} bytes.`);
  }
  const iv = material('initializationVector');
  if (iv.length !== 12 && iv.length !== 16) throw new XksError('InvalidCiphertextException', 'initializationVector must be 12 or 16 bytes.');
  const tag = material('authenticationTag');
  if (tag.length !== 16) throw new XksError('InvalidCiphertextException', 'authenticationTag must be 16 bytes.');
  const mdString = optionalString(body, 'ciphertextMetadata', '');
  let ciphertextMetadata: Buffer | undefined;
  if (mdString !== undefined) {
    ciphertextMetadata = decodeBase64(mdString, 'ciphertextMetadata', 'InvalidCiphertextException');
    if (ciphertextMetadata.length > MAX_CIPHERTEXT_METADATA_BYTES) {
      throw new XksError('ValidationException', `ciphertextMetadata must not exceed ${MAX_CIPHERTEXT_METADATA_BYTES} bytes.`);
    }
    if (ciphertextMetadata.length === 0) ciphertextMetadata = undefined;
  }
  return { ciphertext, iv, tag, aad: optionalAad(body, limits), ciphertextMetadata };
}
