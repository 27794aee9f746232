/**
 * Slow uploads cannot lock KMS out (issue 9, item 1). An attacker without credentials opens
 * connections from 127.0.0.2, sends the headers of a POST and then dribbles its body; KMS's signed
 * requests come from 127.0.0.1. Unauthenticated requests only ever hold pre-authentication slots,
 * bounded in total and per peer address, and each is answered and disconnected at the body
 * deadline; the in-flight capacity (server.overload.maxInFlight) is for authenticated requests.
 *
 * Beyond the bounds, a request whose body is in at once (as KMS sends it) still goes on; only a
 * body that is not is refused (429, connection closed).
 *
 * Synchronisation without sleeps: the slow requests carry "Expect: 100-continue", and the server
 * writes "100 Continue" in the same turn of the event loop in which it hands the request to the
 * pipeline, so receiving it means the request holds its slot.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import path from 'node:path';
import { createKey } from '../../src/hsm/key-admin';
import { startHarness, writeCredential, xksCall, type Credential, type Harness } from '../helpers/proxy-harness';
import { RawConn } from '../helpers/raw-http';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const ATTACKER = '127.0.0.2';
const OTHER_ATTACKER = '127.0.0.3';
const PER_PEER = 4;
const TOTAL = 6;
const ENCRYPT = '/slow/kms/xks/v1/keys/k1/encrypt';

const encryptBody = () => ({
  requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() },
  plaintext: Buffer.from('hello').toString('base64'),
  encryptionAlgorithm: 'AES_GCM',
});

/** A proxy on a fresh token with one key store ("slow", key k1), small bounds, and the given body deadline. */
async function startSlowHarness(label: string, bodyTimeoutMs: number): Promise<{ token: TestToken; h: Harness; cred: Credential }> {
  const token = createTestToken({ label });
  await createKey(token.hsmConfig, token.pin, { label: 'xks-health', usage: 'encrypt-decrypt' });
  await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
  const cred = writeCredential(path.join(token.dir, 'creds'));
  const h = await startHarness({
    hsm: { ...token.hsmConfig, pin: { file: token.pinFile } },
    server: {
      // Fewer in-flight slots than the attacker has connections: before the fix, the attack took
      // them all.
      overload: { maxEventLoopLagMs: 1000, maxInFlight: PER_PEER },
      preAuth: { maxPending: TOTAL, maxPendingPerPeer: PER_PEER },
      bodyTimeoutMs,
      // Node's own request timeout must not end the slow requests first.
      requestTimeoutMs: 300000,
    },
    keyStores: [{ name: 'slow', pathPrefix: '/slow', credentialsDir: path.join(token.dir, 'creds'), keys: [{ externalKeyId: 'k1' }] }],
  });
  return { token, h, cred };
}

/** Slow-upload connections of one test, and how to end them so that the server has let go of them. */
class Attacker {
  private readonly open: RawConn[] = [];

  constructor(private readonly h: () => Harness) {}

  /** A POST whose headers arrive at once and whose 100-byte body has not started yet. */
  async upload(from: string): Promise<RawConn> {
    const h = this.h();
    const c = await RawConn.open(h.proxy.port, h.certFile, from);
    this.open.push(c);
    c.write(`POST ${ENCRYPT} HTTP/1.1\r\nHost: ${h.host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n`);
    return c;
  }

  /** Wait until `c` holds a slot (the server said "100 Continue"), then send one byte of its body. */
  static async holding(c: RawConn): Promise<void> {
    const r = await c.response();
    expect(r?.status, c.pending()).to.equal(100);
    c.write('{');
  }

  /**
   * Finish every body still open and wait for the answers: once a connection is answered, the
   * server has released its slot (the pipeline answers, then releases in the same turn).
   */
  async stop(): Promise<void> {
    await Promise.all(
      this.open.splice(0).map(async (c) => {
        c.write(' '.repeat(99));
        await c.finalResponse();
        c.destroy();
      }),
    );
  }
}

describe('slow uploads without credentials cannot lock out signed requests', function () {
  let token: TestToken;
  let h: Harness;
  let cred: Credential;
  const attacker = new Attacker(() => h);

  before(async () => {
    // A body deadline far beyond the test: the slots stay held for as long as the test needs.
    ({ token, h, cred } = await startSlowHarness('slow-upload-it', 60000));
  });
  afterEach(() => attacker.stop());
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  it("with every pre-auth slot of the attacker held, a signed Encrypt from another address gets 200, and the attacker's next connection is refused with 429 and closed", async () => {
    const attack = await Promise.all(Array.from({ length: PER_PEER }, () => attacker.upload(ATTACKER)));
    await Promise.all(attack.map(Attacker.holding));

    const r = await xksCall(h, ENCRYPT, encryptBody(), { cred });
    expect(r.status, r.text).to.equal(200);
    expect(r.json.ciphertext).to.be.a('string');

    const next = await attacker.upload(ATTACKER);
    const refused = await next.finalResponse();
    expect(refused?.status, next.pending()).to.equal(429);
    expect(refused?.headers['content-type']).to.match(/^application\/json/);
    expect(refused?.json.errorName).to.equal('ThrottlingException');
    expect(refused?.headers.connection).to.equal('close');
    await next.closed;
    // The refusal was cheap, before any body, and the request log names the bound.
    const line = h.requestLog().trim().split('\n').map((l) => JSON.parse(l)).reverse().find((l) => l.errorName === 'ThrottlingException');
    expect(line.reason).to.match(/^pre-auth: 4 requests from 127\.0\.0\.2 awaiting body or authentication \(max 4 per peer\)/);
    expect(line.accessKeyId).to.equal(undefined);
  });

  it('with every slot in total held, a slow upload from a new peer is refused, a signed Encrypt whose body comes with its headers is served, and none of them counts against authenticated capacity', async () => {
    const first = await Promise.all(Array.from({ length: PER_PEER }, () => attacker.upload(ATTACKER)));
    const second = await Promise.all(Array.from({ length: TOTAL - PER_PEER }, () => attacker.upload(OTHER_ATTACKER)));
    await Promise.all([...first, ...second].map(Attacker.holding));
    expect(h.proxy.overload.state().inFlight).to.equal(0);
    // What an operator sees: the pre-auth bound full, from two addresses.
    const metrics = await h.proxy.meter.registry.metrics();
    expect(metrics).to.match(new RegExp(`^xks_preauth_pending ${TOTAL}$`, 'm'));
    expect(metrics).to.match(/^xks_preauth_peers 2$/m);

    // KMS's body arrives with its headers (one write here): it does not need a slot.
    const r = await xksCall(h, ENCRYPT, encryptBody(), { cred });
    expect(r.status, r.text).to.equal(200);

    const third = await attacker.upload('127.0.0.4');
    const refused = await third.finalResponse();
    expect(refused?.status, third.pending()).to.equal(429);
    expect(refused?.json.errorName).to.equal('ThrottlingException');
    await third.closed;
    const line = h.requestLog().trim().split('\n').map((l) => JSON.parse(l)).reverse().find((l) => l.errorName === 'ThrottlingException');
    expect(line.reason).to.match(/^pre-auth: 6 requests awaiting body or authentication \(max 6\)/);
  });
});

describe('the request body has a deadline of its own', function () {
  let token: TestToken;
  let h: Harness;
  const attacker = new Attacker(() => h);

  before(async () => {
    ({ token, h } = await startSlowHarness('body-deadline-it', 300));
  });
  afterEach(() => attacker.stop());
  after(async () => {
    await h?.close();
    token?.cleanup();
  });

  it('a body that does not arrive by the deadline is answered 400 ValidationException in JSON, the connection closed, and the slot freed', async () => {
    const attack = await Promise.all(Array.from({ length: PER_PEER }, () => attacker.upload(ATTACKER)));
    await Promise.all(attack.map(Attacker.holding));
    for (const c of attack) {
      const r = await c.response();
      expect(r?.status, c.pending()).to.equal(400);
      expect(r?.headers['content-type']).to.match(/^application\/json/);
      expect(r?.json.errorName).to.equal('ValidationException');
      expect(r?.json.errorMessage).to.equal('The request body did not arrive within 300 ms.');
      await c.closed;
    }
    // Every slot of that peer is free again.
    const again = await Promise.all(Array.from({ length: PER_PEER }, () => attacker.upload(ATTACKER)));
    const answers = await Promise.all(again.map((c) => c.response()));
    expect(answers.map((a) => a?.status)).to.deep.equal(Array(PER_PEER).fill(100));
  });
});
