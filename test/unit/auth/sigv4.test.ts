import { expect } from 'chai';
import { SigningKeyCache, canonicalQuery, parseAmzDate, parseAuthorization, verifySigV4, type SecretLookup } from '../../../src/auth/sigv4';
import { XksError } from '../../../src/errors/xks-error';
import { signedHeaders, toRawHeaders } from '../../helpers/signer';

const AKID = 'AKIAXKSTESTKEY2345ABCDEFG';
const SECRET = 'FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE=';
const OTHER_AKID = 'BBBBXKSTESTKEY2345ABCDEFG';
const HOST = 'xks.example.com:8443';
const PATH = '/tenant-a/kms/xks/v1/keys/k1/encrypt';
const BODY = JSON.stringify({ requestMetadata: { kmsRequestId: 'r1', kmsOperation: 'Encrypt' }, plaintext: 'SGVsbG8=' });
const NOW = Date.UTC(2026, 10, 23, 12, 0, 0);

const lookup: SecretLookup = {
  secretFor: (id) => (id === AKID ? SECRET : undefined),
  ownerOf: (id) => (id === OTHER_AKID ? 'tenant-b' : undefined),
};

async function signed(over: Partial<Parameters<typeof signedHeaders>[0]> = {}) {
  return signedHeaders({ host: HOST, path: PATH, body: BODY, accessKeyId: AKID, secret: SECRET, date: new Date(NOW), ...over });
}

function verify(headers: Record<string, string>, opts: { body?: string; url?: string; now?: number; method?: string; lookup?: SecretLookup } = {}) {
  return verifySigV4(
    { method: opts.method ?? 'POST', url: opts.url ?? PATH, rawHeaders: toRawHeaders(headers), body: Buffer.from(opts.body ?? BODY) },
    opts.lookup ?? lookup,
    { clockSkewSeconds: 300, now: opts.now ?? NOW },
    new SigningKeyCache(),
  );
}

function reasonOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as XksError).reason;
  }
  return undefined;
}

function expectAuthFailure(f: () => unknown, reason: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(e).to.be.instanceOf(XksError);
    const err = e as XksError;
    expect(err.errorName).to.equal('AuthenticationFailedException');
    expect(err.status).to.equal(401);
    expect(err.detail).to.match(reason);
    // The public message never carries the reason, the signature or the secret.
    expect(err.message).not.to.include(SECRET);
    return;
  }
  expect.fail('expected AuthenticationFailedException');
}

describe('SigV4 verification (spec Appendix A)', () => {
  it('accepts a request signed by the AWS SDK signer, for any region', async () => {
    for (const region of ['us-east-1', 'eu-west-1', 'ap-southeast-2']) {
      const caller = verify(await signed({ region }));
      expect(caller).to.deep.equal({ accessKeyId: AKID, region });
    }
  });

  it('accepts dates at the edges of the 5-minute window and rejects beyond it, both directions', async () => {
    const h = await signed();
    expect(verify(h, { now: NOW + 300_000 }).accessKeyId).to.equal(AKID);
    expect(verify(h, { now: NOW - 300_000 }).accessKeyId).to.equal(AKID);
    expectAuthFailure(() => verify(h, { now: NOW + 301_000 }), /off the proxy clock/);
    expectAuthFailure(() => verify(h, { now: NOW - 301_000 }), /off the proxy clock/);
  });

  const tamperCases: [string, (h: Record<string, string>) => { headers: Record<string, string>; body?: string; url?: string; method?: string }, RegExp][] = [
    ['a changed body byte', (h) => ({ headers: h, body: BODY.replace('r1', 'r2') }), /signature does not match/],
    ['an extra trailing space in the body', (h) => ({ headers: h, body: BODY + ' ' }), /signature does not match/],
    ['another path', (h) => ({ headers: h, url: PATH.replace('encrypt', 'decrypt') }), /signature does not match/],
    ['another key store prefix', (h) => ({ headers: h, url: PATH.replace('tenant-a', 'tenant-b') }), /signature does not match/],
    ['another host', (h) => ({ headers: { ...h, host: 'evil.example.com:8443' } }), /signature does not match/],
    ['another method', (h) => ({ headers: h, method: 'PUT' }), /signature does not match/],
    ['a query string added', (h) => ({ headers: h, url: PATH + '?a=b' }), /signature does not match/],
    ['a changed signed header value', (h) => ({ headers: { ...h, 'content-type': 'text/plain' } }), /signature does not match/],
    ['a flipped signature digit', (h) => ({ headers: { ...h, authorization: h.authorization!.replace(/Signature=(.)/, (_m, c: string) => `Signature=${c === '0' ? '1' : '0'}`) } }), /signature does not match/],
    ['no Authorization header', (h) => ({ headers: Object.fromEntries(Object.entries(h).filter(([k]) => k !== 'authorization')) }), /missing Authorization/],
    ['no X-Amz-Date header', (h) => ({ headers: Object.fromEntries(Object.entries(h).filter(([k]) => k !== 'x-amz-date')) }), /X-Amz-Date/],
    ['a malformed X-Amz-Date', (h) => ({ headers: { ...h, 'x-amz-date': '20261323T120000Z' } }), /malformed X-Amz-Date/],
    ['another algorithm', (h) => ({ headers: { ...h, authorization: h.authorization!.replace('AWS4-HMAC-SHA256', 'AWS4-HMAC-SHA512') } }), /unsupported signing algorithm/],
    ['garbage Authorization', (h) => ({ headers: { ...h, authorization: 'Basic Zm9vOmJhcg==' } }), /unsupported signing algorithm/],
    ['a truncated Authorization', (h) => ({ headers: { ...h, authorization: h.authorization!.split(', Signature')[0]! } }), /lacks Credential, SignedHeaders or Signature/],
  ];
  for (const [name, mutate, reason] of tamperCases) {
    it(`rejects ${name}`, async () => {
      const m = mutate(await signed());
      expectAuthFailure(() => verify(m.headers, m), reason);
    });
  }

  it('rejects an unknown access key id, and says in the log when it belongs to another key store', async () => {
    const other = await signed({ accessKeyId: OTHER_AKID });
    expectAuthFailure(() => verify(other), new RegExp(`access key id ${OTHER_AKID} belongs to key store "tenant-b"`));
    const unknown = await signed({ accessKeyId: 'CCCCXKSTESTKEY2345ABCDEFG' });
    expectAuthFailure(() => verify(unknown), /unknown access key id CCCCXKSTESTKEY2345ABCDEFG$/);
    // The structured reasons metrics and logs read, whatever the wording.
    expect(reasonOf(() => verify(unknown))).to.equal('sigv4.unknown_key_id');
    expect(reasonOf(() => verify(other))).to.equal('sigv4.wrong_key_store');
    // A value that is not an access key id is not echoed into the log.
    const junk = await signed({ accessKeyId: 'not-an-id"\n{"forged":1}' });
    expectAuthFailure(() => verify(junk), /unknown access key id \(malformed, 23 characters\)$/);
  });

  it('rejects a request signed with the wrong secret', async () => {
    const h = await signed({ secret: SECRET.replace('F', 'G') });
    expectAuthFailure(() => verify(h), /signature does not match/);
  });

  it('rejects another service name in the credential scope', async () => {
    const h = await signed({ service: 'kms' });
    expectAuthFailure(() => verify(h), /service in credential scope/);
  });

  it('rejects a signature that does not cover host or x-amz-date', () => {
    const base = `AWS4-HMAC-SHA256 Credential=${AKID}/20261123/us-east-1/kms-xks-proxy/aws4_request, Signature=${'a'.repeat(64)}`;
    const h = { host: HOST, 'x-amz-date': '20261123T120000Z' };
    expectAuthFailure(() => verify({ ...h, authorization: base.replace(', Sig', ', SignedHeaders=x-amz-date, Sig') }), /host is not a signed header/);
    expectAuthFailure(() => verify({ ...h, authorization: base.replace(', Sig', ', SignedHeaders=host, Sig') }), /x-amz-date is not a signed header/);
  });

  it('rejects a credential date that differs from X-Amz-Date', async () => {
    const h = await signed();
    const auth = h.authorization!.replace('/20261123/', '/20261122/');
    expectAuthFailure(() => verify({ ...h, authorization: auth }), /credential date differs/);
  });

  it('caches signing keys per credential and never serves a key derived from an old secret', () => {
    const cache = new SigningKeyCache();
    const k1 = cache.get(AKID, SECRET, '20261123', 'us-east-1', 'kms-xks-proxy');
    expect(cache.get(AKID, SECRET, '20261123', 'us-east-1', 'kms-xks-proxy')).to.equal(k1);
    const k2 = cache.get(AKID, SECRET.replace('F', 'G'), '20261123', 'us-east-1', 'kms-xks-proxy');
    expect(k2.equals(k1)).to.equal(false);
  });

  it('parses the Authorization header fields', () => {
    const p = parseAuthorization(`AWS4-HMAC-SHA256 Credential=${AKID}/20261123/eu-west-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=${'0'.repeat(64)}`);
    expect(p).to.deep.include({ accessKeyId: AKID, date: '20261123', region: 'eu-west-1', service: 'kms-xks-proxy', signedHeaders: ['host', 'x-amz-date'] });
  });

  it('reuses a parsed header prefix only for a well-formed signature that ends the header', () => {
    const prefix = `AWS4-HMAC-SHA256 Credential=${AKID}/20261123/eu-west-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=`;
    expect(parseAuthorization(prefix + 'a'.repeat(64)).signature).to.equal('a'.repeat(64));
    // The same prefix again: the new signature is the one returned, and it is still checked.
    expect(parseAuthorization(prefix + 'b'.repeat(64)).signature).to.equal('b'.repeat(64));
    expectAuthFailure(() => parseAuthorization(prefix + 'B'.repeat(64)), /malformed signature/);
    expectAuthFailure(() => parseAuthorization(prefix + 'z'.repeat(64)), /malformed signature/);
    expectAuthFailure(() => parseAuthorization(prefix + 'a'.repeat(64) + ', Signature=' + 'b'.repeat(64)), /duplicate Signature/);
    // A different prefix is parsed on its own.
    expect(parseAuthorization(prefix.replace('eu-west-1', 'us-east-2') + 'c'.repeat(64)).region).to.equal('us-east-2');
  });

  it('parses X-Amz-Date strictly', () => {
    expect(parseAmzDate('20261123T120000Z')).to.equal(NOW);
    expect(parseAmzDate('20260230T120000Z')).to.be.NaN;
    expect(parseAmzDate('2026-11-23T12:00:00Z')).to.be.NaN;
    // The last good date is remembered; a bad one right after it is still refused.
    expect(parseAmzDate('20261123T120000Z')).to.equal(NOW);
    expect(parseAmzDate('20261123T120000Z ')).to.be.NaN;
    expect(parseAmzDate('20261123T120001Z')).to.equal(NOW + 1000);
  });

  it('canonicalises query strings (sorted, RFC 3986 encoded)', () => {
    expect(canonicalQuery('b=2&a=1&a=0')).to.equal('a=0&a=1&b=2');
    expect(canonicalQuery('x=a b')).to.equal('x=a%20b');
  });
});

describe('our SigV4 signer (used by the conformance checker)', () => {
  it('produces exactly the Authorization header of the AWS SDK signer', async () => {
    const { signRequest } = await import('../../../src/auth/sigv4');
    for (const region of ['us-east-1', 'eu-west-1']) {
      const sdk = await signedHeaders({ host: HOST, path: PATH, body: BODY, accessKeyId: AKID, secret: SECRET, date: new Date(NOW), region, headers: {} });
      const ours = signRequest({ method: 'POST', url: PATH, host: HOST, body: Buffer.from(BODY), accessKeyId: AKID, secret: SECRET, region, date: new Date(NOW), headers: { 'content-type': 'application/json', 'x-amz-content-sha256': sdk['x-amz-content-sha256']! } });
      expect(ours.authorization).to.equal(sdk.authorization);
      expect(verify(ours).accessKeyId).to.equal(AKID);
    }
  });
});
