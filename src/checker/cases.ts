/**
 * Conformance cases of the XKS proxy API v1, positive and negative, each naming the spec section it
 * checks. They run against any XKS proxy (ours or another) through XksClient.
 */
import crypto from 'node:crypto';
import { computeCdiv } from '../xks/cdiv';
import type { CallResult, XksClient } from './client';

export interface CheckContext {
  client: XksClient;
  /** An external key that allows encrypt and decrypt. */
  keyId: string;
  /** Filled by the encrypt case, used by the decrypt cases. */
  encrypted?: { plaintext: Buffer; aad: Buffer; ciphertext: string; initializationVector: string; authenticationTag: string; ciphertextMetadata?: string };
}

export interface CaseOutcome {
  pass: boolean;
  detail: string;
  /** Latency of the calls the case made, in ms. */
  ms: number[];
}

export interface CheckCase {
  name: string;
  spec: string;
  run(ctx: CheckContext): Promise<CaseOutcome>;
}

const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
const requestMetadata = (op: string) => ({
  awsPrincipalArn: 'arn:aws:iam::123456789012:user/xks-conformance-check',
  kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000',
  kmsOperation: op,
  kmsRequestId: crypto.randomUUID(),
});
const healthBody = () => ({ requestMetadata: { kmsRequestId: crypto.randomUUID(), kmsOperation: 'KmsHealthCheck' } });

class Check {
  readonly problems: string[] = [];
  that(ok: boolean, problem: string): void {
    if (!ok) this.problems.push(problem);
  }
  outcome(ms: number[], okDetail: string): CaseOutcome {
    return { pass: this.problems.length === 0, detail: this.problems.length ? this.problems.join('; ') : okDetail, ms };
  }
}

/** Spec "Error codes": JSON body, errorName, errorMessage < 512 printable ASCII characters. */
function expectError(c: Check, r: CallResult, status: number, errorName: string): void {
  c.that(r.status === status, `HTTP ${r.status}, expected ${status}`);
  c.that(r.json !== undefined && typeof r.json === 'object', 'error body is not JSON');
  if (r.json && typeof r.json === 'object') {
    c.that(r.json.errorName === errorName, `errorName ${JSON.stringify(r.json.errorName)}, expected ${errorName}`);
    const m = r.json.errorMessage;
    c.that(m === undefined || (typeof m === 'string' && m.length < 512 && /^[\x20-\x7e]*$/.test(m)), 'errorMessage is not < 512 printable ASCII characters');
  }
}

function errorCase(name: string, spec: string, status: number, errorName: string, call: (ctx: CheckContext) => Promise<CallResult>): CheckCase {
  return {
    name,
    spec,
    async run(ctx) {
      const r = await call(ctx);
      const c = new Check();
      expectError(c, r, status, errorName);
      return c.outcome([r.ms], `${status} ${errorName}`);
    },
  };
}

function decryptBody(e: NonNullable<CheckContext['encrypted']>, over: Record<string, unknown> = {}) {
  return {
    requestMetadata: requestMetadata('Decrypt'),
    encryptionAlgorithm: 'AES_GCM',
    ciphertext: e.ciphertext,
    initializationVector: e.initializationVector,
    authenticationTag: e.authenticationTag,
    additionalAuthenticatedData: b64(e.aad),
    ...(e.ciphertextMetadata ? { ciphertextMetadata: e.ciphertextMetadata } : {}),
    ...over,
  };
}

function flip(s: string): string {
  const b = Buffer.from(s, 'base64');
  b[b.length - 1] = b[b.length - 1]! ^ 1;
  return b.toString('base64');
}

function needEncrypted(ctx: CheckContext): NonNullable<CheckContext['encrypted']> {
  if (!ctx.encrypted) throw new Error('the Encrypt case did not succeed, so there is nothing to decrypt');
  return ctx.encrypted;
}

export const CASES: CheckCase[] = [
  {
    name: 'GetHealthStatus answers with a valid body',
    spec: 'GetHealthStatus',
    async run({ client }) {
      const r = await client.call('/health', healthBody());
      const c = new Check();
      c.that(r.status === 200, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
      const j = r.json ?? {};
      c.that(Number.isInteger(j.xksProxyFleetSize) && j.xksProxyFleetSize > 0, 'xksProxyFleetSize is not an integer > 0');
      for (const f of ['xksProxyVendor', 'xksProxyModel', 'ekmVendor']) c.that(typeof j[f] === 'string' && j[f].length > 0, `${f} missing`);
      const fleet = j.ekmFleetDetails;
      c.that(Array.isArray(fleet) && fleet.length >= 1 && fleet.length <= 10, 'ekmFleetDetails must have 1 to 10 entries');
      if (Array.isArray(fleet)) {
        for (const e of fleet) c.that(typeof e.id === 'string' && typeof e.model === 'string' && ['ACTIVE', 'DEGRADED', 'UNAVAILABLE'].includes(e.healthStatus), `bad ekmFleetDetails entry ${JSON.stringify(e)}`);
      }
      return c.outcome([r.ms], `${j.xksProxyModel} / ${j.ekmVendor}: ${Array.isArray(fleet) ? fleet.map((e: { healthStatus: string }) => e.healthStatus).join(',') : '?'}`);
    },
  },
  {
    name: 'GetKeyMetadata reports an AES_256 key that can encrypt and decrypt',
    spec: 'GetKeyMetadata',
    async run({ client, keyId }) {
      const r = await client.call(`/keys/${keyId}/metadata`, { requestMetadata: requestMetadata('DescribeKey') });
      const c = new Check();
      c.that(r.status === 200, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
      const j = r.json ?? {};
      c.that(j.keySpec === 'AES_256', `keySpec ${j.keySpec}`);
      c.that(Array.isArray(j.keyUsage) && j.keyUsage.length <= 10 && j.keyUsage.includes('ENCRYPT') && j.keyUsage.includes('DECRYPT'), `keyUsage ${JSON.stringify(j.keyUsage)}`);
      c.that(j.keyStatus === 'ENABLED' || j.keyStatus === 'DISABLED', `keyStatus ${j.keyStatus}`);
      return c.outcome([r.ms], `${j.keySpec} [${(j.keyUsage ?? []).join(',')}] ${j.keyStatus}`);
    },
  },
  {
    name: 'Encrypt with AAD returns IV, tag, same-length ciphertext and a correct CDIV',
    spec: 'Encrypt; Appendix C',
    async run(ctx) {
      const plaintext = crypto.randomBytes(32);
      const aad = crypto.randomBytes(100);
      const r = await ctx.client.call(`/keys/${ctx.keyId}/encrypt`, {
        requestMetadata: requestMetadata('GenerateDataKey'),
        plaintext: b64(plaintext),
        additionalAuthenticatedData: b64(aad),
        encryptionAlgorithm: 'AES_GCM',
        ciphertextDataIntegrityValueAlgorithm: 'SHA_256',
      });
      const c = new Check();
      c.that(r.status === 200, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
      const j = r.json ?? {};
      const dec = (f: string) => (typeof j[f] === 'string' ? Buffer.from(j[f], 'base64') : Buffer.alloc(0));
      const [ct, iv, tag, md] = [dec('ciphertext'), dec('initializationVector'), dec('authenticationTag'), dec('ciphertextMetadata')];
      c.that(ct.length === plaintext.length, `ciphertext is ${ct.length} bytes for ${plaintext.length}`);
      c.that(iv.length === 12 || iv.length === 16, `IV is ${iv.length} bytes`);
      c.that(tag.length === 16, `tag is ${tag.length} bytes`);
      c.that(md.length <= 20, `ciphertextMetadata is ${md.length} bytes`);
      const cdiv = computeCdiv({ aad, ciphertextMetadata: md, iv, ciphertext: ct, tag });
      c.that(j.ciphertextDataIntegrityValue === cdiv, 'ciphertextDataIntegrityValue does not match our computation');
      if (r.status === 200) ctx.encrypted = { plaintext, aad, ciphertext: j.ciphertext, initializationVector: j.initializationVector, authenticationTag: j.authenticationTag, ...(j.ciphertextMetadata ? { ciphertextMetadata: j.ciphertextMetadata } : {}) };
      return c.outcome([r.ms], `IV ${iv.length} B, tag ${tag.length} B, CDIV verified`);
    },
  },
  {
    name: 'Decrypt returns the plaintext',
    spec: 'Decrypt',
    async run(ctx) {
      const e = needEncrypted(ctx);
      const r = await ctx.client.call(`/keys/${ctx.keyId}/decrypt`, decryptBody(e));
      const c = new Check();
      c.that(r.status === 200, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
      c.that(typeof r.json?.plaintext === 'string' && Buffer.from(r.json.plaintext, 'base64').equals(e.plaintext), 'plaintext differs');
      return c.outcome([r.ms], 'round trip ok');
    },
  },
  {
    name: 'Encrypt and Decrypt of 4300 bytes with 8192 bytes of AAD',
    spec: 'Encrypt, Decrypt (sizes)',
    async run({ client, keyId }) {
      const plaintext = crypto.randomBytes(4300);
      const aad = crypto.randomBytes(8192);
      const e = await client.call(`/keys/${keyId}/encrypt`, { requestMetadata: requestMetadata('Encrypt'), plaintext: b64(plaintext), additionalAuthenticatedData: b64(aad), encryptionAlgorithm: 'AES_GCM' });
      const c = new Check();
      c.that(e.status === 200, `Encrypt HTTP ${e.status}: ${e.text.slice(0, 200)}`);
      if (e.status !== 200) return c.outcome([e.ms], '');
      const d = await client.call(`/keys/${keyId}/decrypt`, decryptBody({ plaintext, aad, ...e.json }));
      c.that(d.status === 200 && Buffer.from(d.json?.plaintext ?? '', 'base64').equals(plaintext), `Decrypt HTTP ${d.status}`);
      return c.outcome([e.ms, d.ms], 'round trip ok');
    },
  },
  {
    name: 'An unknown kmsOperation and unknown fields are accepted',
    spec: 'requestMetadata.kmsOperation; Appendix B',
    async run({ client, keyId }) {
      const r = await client.call(`/keys/${keyId}/encrypt`, { requestMetadata: { ...requestMetadata('SomeFutureOperation'), someFutureField: 'x' }, plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM', anotherFutureField: 1 });
      const c = new Check();
      c.that(r.status === 200, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
      return c.outcome([r.ms], 'accepted');
    },
  },
  errorCase('A tampered tag is InvalidCiphertextException', 'Decrypt; Error codes', 400, 'InvalidCiphertextException', (ctx) => {
    const e = needEncrypted(ctx);
    return ctx.client.call(`/keys/${ctx.keyId}/decrypt`, decryptBody(e, { authenticationTag: flip(e.authenticationTag) }));
  }),
  errorCase('A changed AAD is InvalidCiphertextException', 'Decrypt; Error codes', 400, 'InvalidCiphertextException', (ctx) => {
    const e = needEncrypted(ctx);
    return ctx.client.call(`/keys/${ctx.keyId}/decrypt`, decryptBody(e, { additionalAuthenticatedData: flip(b64(e.aad)) }));
  }),
  errorCase('Metadata moved from AAD to ciphertextMetadata is InvalidCiphertextException', 'Encrypt (ciphertextMetadata AAD construction)', 400, 'InvalidCiphertextException', (ctx) => {
    const e = needEncrypted(ctx);
    return ctx.client.call(`/keys/${ctx.keyId}/decrypt`, decryptBody({ ...e, aad: Buffer.alloc(0) }, { additionalAuthenticatedData: undefined, ciphertextMetadata: b64(e.aad.subarray(0, 20)) }));
  }),
  errorCase('An unknown key is KeyNotFoundException', 'Error codes', 404, 'KeyNotFoundException', ({ client }) =>
    client.call(`/keys/xks-conformance-no-such-key-${crypto.randomBytes(4).toString('hex')}/metadata`, { requestMetadata: requestMetadata('DescribeKey') }),
  ),
  errorCase('Malformed JSON is ValidationException', 'Error codes', 400, 'ValidationException', ({ client, keyId }) => client.call(`/keys/${keyId}/encrypt`, '{"requestMetadata":')),
  errorCase('A wrong secret is AuthenticationFailedException', 'Authentication; Appendix A', 401, 'AuthenticationFailedException', ({ client }) =>
    client.call('/health', healthBody(), { secret: crypto.randomBytes(32).toString('base64') }),
  ),
  errorCase('A request signed 10 minutes ago is AuthenticationFailedException', 'Appendix A, task 4', 401, 'AuthenticationFailedException', ({ client }) =>
    client.call('/health', healthBody(), { date: new Date(Date.now() - 10 * 60_000) }),
  ),
  errorCase('A body changed after signing is AuthenticationFailedException', 'Appendix A, task 1', 401, 'AuthenticationFailedException', ({ client }) =>
    client.call('/health', healthBody(), { sendBody: JSON.stringify(healthBody()) }),
  ),
  errorCase('An unsigned request is AuthenticationFailedException', 'Authentication', 401, 'AuthenticationFailedException', ({ client }) => client.call('/health', healthBody(), { unsigned: true })),
  errorCase('An unknown path is InvalidUriPathException', 'API operations; Error codes', 404, 'InvalidUriPathException', ({ client, keyId }) =>
    client.call(`/keys/${keyId}/no-such-operation`, { requestMetadata: requestMetadata('Encrypt') }),
  ),
  {
    name: 'GET on an API URI is 405',
    spec: 'API operations',
    async run({ client }) {
      const r = await client.call('/health', '', { method: 'GET' });
      const c = new Check();
      c.that(r.status === 405, `HTTP ${r.status}`);
      return c.outcome([r.ms], '405');
    },
  },
];

/**
 * Migration check: ciphertexts that another XKS proxy (the one being replaced, on the same HSM
 * keys and credential) makes must decrypt here, or every ciphertext KMS holds from it is lost.
 * The other proxy seals; this one opens. With AAD (KMS always sends one) and without, and at the
 * spec's maximum plaintext size.
 */
export function migrationCase(from: XksClient, fromUrl: string): CheckCase {
  return {
    name: `Ciphertexts made by ${fromUrl} decrypt here`,
    spec: 'Encrypt, Decrypt (migration)',
    async run(ctx) {
      const c = new Check();
      const ms: number[] = [];
      try {
        for (const [plaintext, aad] of [
          [crypto.randomBytes(32), crypto.randomBytes(100)],
          [crypto.randomBytes(32), undefined],
          [crypto.randomBytes(4300), crypto.randomBytes(1000)],
        ] as const) {
          const e = await from.call(`/keys/${ctx.keyId}/encrypt`, { requestMetadata: requestMetadata('Encrypt'), plaintext: b64(plaintext), ...(aad ? { additionalAuthenticatedData: b64(aad) } : {}), encryptionAlgorithm: 'AES_GCM' });
          if (e.status !== 200) {
            c.that(false, `the other proxy's Encrypt answered HTTP ${e.status}: ${e.text.slice(0, 200)}`);
            continue;
          }
          const sealed = { plaintext, aad: aad ?? Buffer.alloc(0), ciphertext: e.json.ciphertext, initializationVector: e.json.initializationVector, authenticationTag: e.json.authenticationTag, ...(e.json.ciphertextMetadata ? { ciphertextMetadata: e.json.ciphertextMetadata } : {}) };
          const body = decryptBody(sealed);
          if (!aad) delete (body as { additionalAuthenticatedData?: string }).additionalAuthenticatedData;
          const d = await ctx.client.call(`/keys/${ctx.keyId}/decrypt`, body);
          ms.push(d.ms);
          c.that(d.status === 200 && typeof d.json?.plaintext === 'string' && Buffer.from(d.json.plaintext, 'base64').equals(plaintext), `${plaintext.length} bytes ${aad ? 'with' : 'without'} AAD: HTTP ${d.status} ${d.json?.errorName ?? ''}`);
        }
      } finally {
        from.close();
      }
      return c.outcome(ms, 'every ciphertext of the other proxy decrypts here');
    },
  };
}
