/**
 * AWS SigV4 verification of XKS requests (spec "Authentication" and Appendix A).
 *
 * We verify the bytes that arrived: the canonical request is rebuilt from the raw method, path,
 * raw header values and raw body, never from parsed JSON. Every failure is a 401
 * AuthenticationFailedException whose public message is generic; the reason goes to the log
 * (never the secret, the signature or the Authorization header).
 */
import crypto from 'node:crypto';
import { XksError } from '../errors/xks-error';

export const SIGV4_ALGORITHM = 'AWS4-HMAC-SHA256';
export const XKS_SERVICE = 'kms-xks-proxy';

export interface SignedRequest {
  method: string;
  /** The request target as it arrived: path plus optional ?query. */
  url: string;
  /** Node's IncomingMessage.rawHeaders: [name, value, name, value, ...] */
  rawHeaders: readonly string[];
  body: Buffer;
}

/** Resolves an access key id to its secret, within the key store of the URI only. */
export interface SecretLookup {
  secretFor(accessKeyId: string): string | undefined;
  /** For the log only: the key store that owns an access key id that is not ours, if any. */
  ownerOf?(accessKeyId: string): string | undefined;
}

export interface VerifiedCaller {
  accessKeyId: string;
  region: string;
}

export interface SigV4Options {
  clockSkewSeconds: number;
  /** Milliseconds since the epoch; injectable for tests. */
  now: number;
}

/** Why a signature was refused: the bounded reason code metrics and logs read (XksError.reason). */
export type SigV4FailureReason = 'missing_auth' | 'malformed' | 'clock_skew' | 'unknown_key_id' | 'wrong_key_store' | 'signature_mismatch';
export const SIGV4_FAILURE_REASONS: readonly SigV4FailureReason[] = ['missing_auth', 'malformed', 'clock_skew', 'unknown_key_id', 'wrong_key_store', 'signature_mismatch'];

function fail(text: string, reason: SigV4FailureReason = 'malformed'): never {
  throw new XksError('AuthenticationFailedException', undefined, `sigv4: ${text}`).because(`sigv4.${reason}`);
}

interface ParsedAuthorization {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
}

const SIGNATURE_FIELD = 'Signature=';
const SIGNATURE_HEX = /^[0-9a-f]{64}$/;
/**
 * Parsed headers by everything before their signature: a caller's requests differ only in the
 * last 64 characters, and parsing the rest showed at ~15% of SigV4 verification. Bounded: the
 * map is cleared when full (it is filled before authentication, so by anyone).
 */
const parsedPrefixes = new Map<string, Omit<ParsedAuthorization, 'signature'>>();
const MAX_PARSED_PREFIXES = 256;

/** `AWS4-HMAC-SHA256 Credential=AKID/yyyymmdd/region/service/aws4_request, SignedHeaders=a;b, Signature=hex` */
export function parseAuthorization(value: string): ParsedAuthorization {
  // Fast path: the signature is the last field and the rest was parsed (and validated) before.
  const sigAt = value.length - 64;
  if (sigAt > SIGNATURE_FIELD.length && value.startsWith(SIGNATURE_FIELD, sigAt - SIGNATURE_FIELD.length)) {
    const known = parsedPrefixes.get(value.slice(0, sigAt));
    const signature = value.slice(sigAt);
    if (known && SIGNATURE_HEX.test(signature)) return { ...known, signature };
  }
  const parsed = parseAuthorizationFully(value);
  if (sigAt > 0 && value.endsWith(SIGNATURE_FIELD + parsed.signature)) {
    if (parsedPrefixes.size >= MAX_PARSED_PREFIXES) parsedPrefixes.clear();
    const { signature: _signature, ...rest } = parsed;
    parsedPrefixes.set(value.slice(0, sigAt), rest);
  }
  return parsed;
}

function parseAuthorizationFully(value: string): ParsedAuthorization {
  const space = value.indexOf(' ');
  if (space < 0) fail('malformed Authorization header');
  if (value.slice(0, space) !== SIGV4_ALGORITHM) fail('unsupported signing algorithm');
  const fields = new Map<string, string>();
  for (const part of value.slice(space + 1).split(',')) {
    const p = part.trim();
    const eq = p.indexOf('=');
    if (eq <= 0) fail('malformed Authorization header');
    const k = p.slice(0, eq);
    if (fields.has(k)) fail(`duplicate ${k} in Authorization header`);
    fields.set(k, p.slice(eq + 1));
  }
  const credential = fields.get('Credential');
  const signedHeaders = fields.get('SignedHeaders');
  const signature = fields.get('Signature');
  if (credential === undefined || signedHeaders === undefined || signature === undefined) {
    fail('Authorization header lacks Credential, SignedHeaders or Signature');
  }
  const scope = credential.split('/');
  if (scope.length !== 5) fail('malformed credential scope');
  const [accessKeyId, date, region, service, terminator] = scope as [string, string, string, string, string];
  if (!/^\d{8}$/.test(date)) fail('malformed credential date');
  if (!/^[a-z0-9-]{1,64}$/.test(region)) fail('malformed credential region');
  if (terminator !== 'aws4_request') fail('credential scope does not end in aws4_request');
  if (!SIGNATURE_HEX.test(signature)) fail('malformed signature');
  const names = signedHeaders.split(';');
  for (let i = 0; i < names.length; i++) {
    if (!/^[a-z0-9-]+$/.test(names[i]!)) fail('malformed SignedHeaders');
    if (i > 0 && names[i - 1]! >= names[i]!) fail('SignedHeaders not sorted and unique');
  }
  return { accessKeyId, date, region, service, signedHeaders: names, signature };
}

/** Header values by lower-case name, as they arrived (several occurrences kept in order). */
function headerValues(rawHeaders: readonly string[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    const list = m.get(name);
    if (list) list.push(rawHeaders[i + 1]!);
    else m.set(name, [rawHeaders[i + 1]!]);
  }
  return m;
}

/** SigV4 header canonicalisation: trim, collapse inner runs of spaces, join repeats with ",". */
function canonicalHeaderValue(values: string[]): string {
  return values.map((v) => v.trim().replace(/\s+/g, ' ')).join(',');
}

/** RFC 3986 encoding as SigV4 wants it: unreserved characters stay, everything else is %XX. */
function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/**
 * Canonical URI for services other than S3: each segment URI-encoded once more. XKS paths only
 * use unreserved characters and "/", so for every valid XKS request this is the path itself.
 */
export function canonicalUri(path: string): string {
  if (path === '') return '/';
  // Every valid XKS path is made of unreserved characters and "/": nothing to encode.
  return /^[A-Za-z0-9\-._~/]*$/.test(path) ? path : path.split('/').map(uriEncode).join('/');
}

export function canonicalQuery(query: string): string {
  if (query === '') return '';
  const pairs = query.split('&').filter((p) => p.length > 0).map((p) => {
    const eq = p.indexOf('=');
    const k = eq < 0 ? p : p.slice(0, eq);
    const v = eq < 0 ? '' : p.slice(eq + 1);
    const dec = (s: string) => {
      try {
        return decodeURIComponent(s.replace(/\+/g, ' '));
      } catch {
        return s;
      }
    };
    return [uriEncode(dec(k)), uriEncode(dec(v))] as const;
  });
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

function sha256Hex(data: Buffer | string): string {
  return crypto.hash('sha256', data, 'hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return crypto.createHmac('sha256', key).update(data).digest();
}

/** SigV4 key derivation: HMAC chain over date, region, service and "aws4_request". */
export function deriveSigningKey(secret: string, date: string, region: string, service: string): Buffer {
  return hmac(hmac(hmac(hmac('AWS4' + secret, date), region), service), 'aws4_request');
}

/**
 * Derived signing keys, cached per access key id, date and region: the four-HMAC chain is done
 * once a day per credential and region instead of on every request. An entry remembers the
 * secret it was derived from, so a rotated secret never meets a stale key.
 */
export class SigningKeyCache {
  private readonly entries = new Map<string, { secret: string; key: Buffer }>();
  constructor(private readonly maxEntries = 1024) {}

  get(accessKeyId: string, secret: string, date: string, region: string, service: string): Buffer {
    const id = `${accessKeyId}/${date}/${region}/${service}`;
    const hit = this.entries.get(id);
    if (hit && hit.secret === secret) return hit.key;
    const key = deriveSigningKey(secret, date, region, service);
    if (this.entries.size >= this.maxEntries) this.entries.clear();
    this.entries.set(id, { secret, key });
    return key;
  }
}

/** The last X-Amz-Date parsed: every request within the same second carries the same one. */
let lastAmzDate = { text: '', ms: NaN };

/** Parse an X-Amz-Date (yyyymmddThhmmssZ) into epoch milliseconds, or NaN. */
export function parseAmzDate(v: string): number {
  if (v === lastAmzDate.text) return lastAmzDate.ms;
  const ms = parseAmzDateUncached(v);
  if (!Number.isNaN(ms)) lastAmzDate = { text: v, ms };
  return ms;
}

function parseAmzDateUncached(v: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(v);
  if (!m) return NaN;
  const t = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
  // Reject dates that Date.UTC silently normalises (e.g. month 13).
  return formatAmzDate(new Date(t)) === v ? t : NaN;
}

export interface SignatureInput {
  method: string;
  /** Path plus optional ?query, as sent. */
  url: string;
  /** Header values by lower-case name. */
  headers: ReadonlyMap<string, readonly string[]>;
  /** Sorted, lower-case. */
  signedHeaders: readonly string[];
  body: Buffer;
  amzDate: string;
  scope: { date: string; region: string; service: string };
  signingKey: Buffer;
}

/**
 * The SigV4 signature (hex) of a request: canonical request, string to sign, HMAC with the derived
 * key. The one implementation both the verifier and our own signer (the conformance checker) use.
 */
export function computeSignature(i: SignatureInput): string {
  const q = i.url.indexOf('?');
  const path = q < 0 ? i.url : i.url.slice(0, q);
  const query = q < 0 ? '' : i.url.slice(q + 1);
  const canonicalHeaders = i.signedHeaders.map((name) => {
    const values = i.headers.get(name);
    if (!values) fail(`signed header ${name} is missing`);
    return `${name}:${canonicalHeaderValue([...values])}\n`;
  });
  const canonicalRequest = [
    i.method.toUpperCase(),
    canonicalUri(path),
    canonicalQuery(query),
    canonicalHeaders.join(''),
    i.signedHeaders.join(';'),
    sha256Hex(i.body),
  ].join('\n');
  const scope = `${i.scope.date}/${i.scope.region}/${i.scope.service}/aws4_request`;
  const stringToSign = [SIGV4_ALGORITHM, i.amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  return hmac(i.signingKey, stringToSign).toString('hex');
}

/** X-Amz-Date format of a time: yyyymmddThhmmssZ. */
export function formatAmzDate(t: Date): string {
  return t.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

export interface SignRequestInput {
  method: string;
  url: string;
  host: string;
  body: Buffer;
  accessKeyId: string;
  secret: string;
  region: string;
  service?: string;
  date?: Date;
  /** Extra headers to send and sign (lower-case names), e.g. content-type. */
  headers?: Record<string, string>;
}

/** Sign a request the way KMS does (host and x-amz-date signed, plus any extra headers). */
export function signRequest(r: SignRequestInput): Record<string, string> {
  const amzDate = formatAmzDate(r.date ?? new Date());
  const service = r.service ?? XKS_SERVICE;
  const all: Record<string, string> = { ...(r.headers ?? {}), host: r.host, 'x-amz-date': amzDate };
  const names = Object.keys(all).map((n) => n.toLowerCase()).sort();
  const headers = new Map(Object.entries(all).map(([k, v]) => [k.toLowerCase(), [v]]));
  const date = amzDate.slice(0, 8);
  const signingKey = deriveSigningKey(r.secret, date, r.region, service);
  const signature = computeSignature({ method: r.method, url: r.url, headers, signedHeaders: names, body: r.body, amzDate, scope: { date, region: r.region, service }, signingKey });
  return {
    ...all,
    authorization: `${SIGV4_ALGORITHM} Credential=${r.accessKeyId}/${date}/${r.region}/${service}/aws4_request, SignedHeaders=${names.join(';')}, Signature=${signature}`,
  };
}

/**
 * Verify a request's SigV4 signature. Returns the caller on success; throws
 * AuthenticationFailedException (with the reason as log-only detail) otherwise.
 */
export function verifySigV4(
  req: SignedRequest,
  secrets: SecretLookup,
  opts: SigV4Options,
  keyCache: SigningKeyCache,
): VerifiedCaller {
  const headers = headerValues(req.rawHeaders);
  const authValues = headers.get('authorization');
  if (!authValues) fail('missing Authorization header', 'missing_auth');
  if (authValues.length !== 1) fail('more than one Authorization header');
  const auth = parseAuthorization(authValues[0]!);
  if (auth.service !== XKS_SERVICE) fail(`service in credential scope is not ${XKS_SERVICE}`);
  // Spec Appendix A: host and x-amz-date are always signed.
  if (!auth.signedHeaders.includes('host')) fail('host is not a signed header');
  if (!auth.signedHeaders.includes('x-amz-date')) fail('x-amz-date is not a signed header');
  const amzDates = headers.get('x-amz-date');
  if (!amzDates || amzDates.length !== 1) fail('missing or repeated X-Amz-Date header');
  const amzDate = amzDates[0]!.trim();
  const t = parseAmzDate(amzDate);
  if (Number.isNaN(t)) fail('malformed X-Amz-Date');
  if (Math.abs(opts.now - t) > opts.clockSkewSeconds * 1000) {
    fail(`X-Amz-Date is ${Math.round((t - opts.now) / 1000)} s off the proxy clock (allowed +-${opts.clockSkewSeconds} s)`, 'clock_skew');
  }
  if (amzDate.slice(0, 8) !== auth.date) fail('credential date differs from X-Amz-Date');

  const secret = secrets.secretFor(auth.accessKeyId);
  if (secret === undefined) {
    const owner = secrets.ownerOf?.(auth.accessKeyId);
    // The id, never the secret, so that an operator can tell a stale KMS credential from a probe.
    // Shown only when it has the spec's form (20-30 of A-Z and 2-7): anything else is caller noise.
    const id = /^[A-Z2-7]{20,30}$/.test(auth.accessKeyId) ? auth.accessKeyId : `(malformed, ${auth.accessKeyId.length} characters)`;
    fail(owner ? `access key id ${id} belongs to key store "${owner}", not to this URI's key store` : `unknown access key id ${id}`, owner ? 'wrong_key_store' : 'unknown_key_id');
  }

  const signature = computeSignature({
    method: req.method,
    url: req.url,
    headers,
    signedHeaders: auth.signedHeaders,
    body: req.body,
    amzDate,
    scope: { date: auth.date, region: auth.region, service: auth.service },
    signingKey: keyCache.get(auth.accessKeyId, secret, auth.date, auth.region, auth.service),
  });
  const expected = Buffer.from(signature, 'latin1');
  const given = Buffer.from(auth.signature, 'latin1');
  // Both are 64 hex characters (checked when parsing), so the comparison is constant-time.
  if (!crypto.timingSafeEqual(expected, given)) fail('signature does not match', 'signature_mismatch');
  return { accessKeyId: auth.accessKeyId, region: auth.region };
}
