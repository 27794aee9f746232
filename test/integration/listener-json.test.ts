/**
 * Every answer on the XKS listener is JSON with a spec errorName (spec "Error codes": an HTTP
 * error without a JSON body is "uninterpretable" to KMS), including the requests Node would answer
 * itself with an empty body or a closed connection (issue 9, item 7). Raw bytes over real TLS
 * sockets: a client library would not send most of these.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, type Credential, type Harness } from '../helpers/proxy-harness';
import { RawConn, type RawResponse } from '../helpers/raw-http';
import { signedHeaders } from '../helpers/signer';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const BASE = '/json/kms/xks/v1';
const API_PATHS = [`${BASE}/health`, `${BASE}/keys/k1/metadata`, `${BASE}/keys/k1/encrypt`, `${BASE}/keys/k1/decrypt`];
const SPEC_NAMES = ['ValidationException', 'InvalidStateException', 'InvalidCiphertextException', 'InvalidKeyUsageException', 'AuthenticationFailedException', 'AccessDeniedException', 'KeyNotFoundException', 'InvalidUriPathException', 'ThrottlingException', 'UnsupportedOperationException', 'DependencyTimeoutException', 'InternalException'];

function expectJsonError(r: RawResponse | undefined, status: number, errorName: string): asserts r is RawResponse {
  expect(r, 'no response before the connection closed').to.not.equal(undefined);
  expect(r!.status, r!.text).to.equal(status);
  expect(r!.headers['content-type']).to.match(/^application\/json/);
  expect(SPEC_NAMES).to.include(errorName);
  expect(r!.json?.errorName, r!.text).to.equal(errorName);
  expect(r!.json.errorMessage).to.match(/^[\x20-\x7e]{1,511}$/);
  expect(r!.headers['x-xks-error-name']).to.equal(errorName);
}

describe('the XKS listener answers everything in JSON with a spec error name', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  const conns: RawConn[] = [];

  async function connect(): Promise<RawConn> {
    const c = await RawConn.open(h.proxy.port, h.certFile);
    conns.push(c);
    return c;
  }

  /** One raw request on a fresh connection; its first final answer. */
  async function send(raw: string, opts: { head?: boolean } = {}): Promise<{ r: RawResponse | undefined; c: RawConn }> {
    const c = await connect();
    c.write(raw);
    return { r: await c.finalResponse(opts), c };
  }

  before(async () => {
    token = createTestToken({ label: 'listener-json-it' });
    await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
    cred = writeCredential(path.join(token.dir, 'creds'));
    h = await startHarness({
      hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
      keyStores: [{ name: 'json', pathPrefix: '/json', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }] }],
    });
  });
  afterEach(() => {
    for (const c of conns.splice(0)) c.destroy();
  });
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  it('a request without Host: 400 ValidationException (not Node\'s empty 400)', async () => {
    const { r } = await send(`POST ${BASE}/health HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`);
    expectJsonError(r, 400, 'ValidationException');
    expect(r.json.errorMessage).to.match(/Host header/);
  });

  it('an Expect other than 100-continue: 417 ValidationException, connection closed', async () => {
    const { r, c } = await send(`POST ${BASE}/health HTTP/1.1\r\nHost: ${h.host}\r\nExpect: bogus\r\nContent-Length: 2\r\n\r\n{}`);
    expectJsonError(r, 417, 'ValidationException');
    expect(r.json.errorMessage).to.match(/Expect/);
    await c.closed;
  });

  it('Expect: 100-continue works: "100 Continue", then the signed Encrypt is served', async () => {
    const body = JSON.stringify({
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() },
      plaintext: Buffer.from('hello').toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    const p = `${BASE}/keys/k1/encrypt`;
    const headers = await signedHeaders({ host: h.host, path: p, body, accessKeyId: cred.accessKeyId, secret: cred.secret });
    const c = await connect();
    c.write(`POST ${p} HTTP/1.1\r\n${Object.entries({ ...headers, 'content-length': String(Buffer.byteLength(body)), expect: '100-continue' }).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`);
    const interim = await c.response();
    expect(interim?.status, c.pending()).to.equal(100);
    c.write(body);
    const r = await c.response();
    expect(r?.status, r?.text).to.equal(200);
    expect(r?.json.ciphertext).to.be.a('string');
  });

  for (const method of ['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
    it(`${method} on each API URI: 405 UnsupportedOperationException with Allow: POST`, async () => {
      for (const p of API_PATHS) {
        const { r } = await send(`${method} ${p} HTTP/1.1\r\nHost: ${h.host}\r\nContent-Length: 0\r\n\r\n`);
        expectJsonError(r, 405, 'UnsupportedOperationException');
        expect(r.headers.allow).to.equal('POST');
      }
    });
  }

  it('HEAD on an API URI: the headers the GET gets (405, JSON, Allow, the error name in X-Xks-Error-Name) and no body', async () => {
    for (const p of API_PATHS) {
      const c = await connect();
      c.write(`HEAD ${p} HTTP/1.1\r\nHost: ${h.host}\r\n\r\nGET ${p} HTTP/1.1\r\nHost: ${h.host}\r\n\r\n`);
      const head = await c.finalResponse({ head: true });
      // The GET on the same connection parses right after the HEAD's headers: no body was sent.
      const get = await c.finalResponse();
      expectJsonError(get, 405, 'UnsupportedOperationException');
      expect(head?.status).to.equal(405);
      expect(head?.text).to.equal('');
      const { date: _d1, ...headHeaders } = head!.headers;
      const { date: _d2, ...getHeaders } = get.headers;
      expect(headHeaders).to.deep.equal(getHeaders);
    }
  });

  it('CONNECT: 405 UnsupportedOperationException instead of a closed connection', async () => {
    const { r, c } = await send(`CONNECT ${h.host} HTTP/1.1\r\nHost: ${h.host}\r\n\r\n`);
    expectJsonError(r, 405, 'UnsupportedOperationException');
    expect(r.headers.allow).to.equal('POST');
    await c.closed;
  });

  const malformed: [string, string][] = [
    ['a request line that is not HTTP', 'HELLO THERE\r\n\r\n'],
    ['a header without a colon', `POST ${BASE}/health HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n`],
    ['both Content-Length and Transfer-Encoding', `POST ${BASE}/health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}`],
    ['a bad chunk size', `POST ${BASE}/health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`],
    ['an HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
  ];
  for (const [what, raw] of malformed) {
    it(`a malformed request (${what}): 400 ValidationException, connection closed`, async () => {
      const { r, c } = await send(raw);
      expectJsonError(r, 400, 'ValidationException');
      await c.closed;
    });
  }

  it('oversize headers: 431 with ValidationException, connection closed', async () => {
    const { r, c } = await send(`POST ${BASE}/health HTTP/1.1\r\nHost: ${h.host}\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
    expectJsonError(r, 431, 'ValidationException');
    await c.closed;
  });

  it('the proxy still serves after all of it', async () => {
    const { r } = await send(`GET /healthz/live HTTP/1.1\r\nHost: ${h.host}\r\n\r\n`);
    expect(r?.status).to.equal(200);
  });
});

