/**
 * The audit log against a killed process and against an attacker who shortens it, with the real
 * `xks-proxy serve` and `xks-proxy audit verify` on a real SoftHSM2 token:
 *  - no request is answered before its record is in the file: after `kill -9` in the middle of
 *    concurrent signed Encrypts, every kmsRequestId a client got a 200 for is in the audit file;
 *  - deleting the newest audit file, or cutting a file right after a signed checkpoint, passes
 *    `audit verify` on the files alone (exit 0) but fails it with the witness (exit 5).
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { auditedRequestIds, DEFAULT_CLI, encryptUntilKilled, serveFixture, signedEncrypt, startServe, type ServeFixture } from '../helpers/serve-process';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const run = promisify(execFile);

describe('audit log against a real serve process', function () {
  this.timeout(120_000);
  let token: TestToken;
  before(() => {
    token = createTestToken();
  });
  after(() => token?.cleanup());

  async function verify(fx: ServeFixture, dir: string, ...extra: string[]): Promise<{ code: number; out: string }> {
    try {
      const { stdout } = await run(process.execPath, [DEFAULT_CLI, 'audit', 'verify', '--public-key', fx.publicKeyFile, ...extra, dir]);
      return { code: 0, out: stdout };
    } catch (e) {
      const err = e as { code: number; stdout: string };
      return { code: err.code, out: err.stdout };
    }
  }

  it('kill -9 under concurrent signed Encrypts: every request answered 200 has its record in the audit file', async () => {
    const witness = path.join(token.dir, 'kill-witness.log');
    const fx = await serveFixture(token, path.join(token.dir, 'kill'), { witnessFile: witness });
    for (let round = 0; round < 3; round++) {
      const proc = await startServe(fx);
      const { answered } = await encryptUntilKilled(fx, proc, { concurrency: 16, killAfter: 150 });
      expect(answered.length).to.be.at.least(150);
      const audited = auditedRequestIds(fx.auditDir);
      const missing = answered.filter((id) => !audited.has(id));
      expect(missing, `round ${round}: ${missing.length} of ${answered.length} answered requests have no audit record`).to.deep.equal([]);
    }
    // A clean start and stop after the crashes: the chain (with its acknowledged torn lines) verifies.
    // (One answered request first: `serve` logs that it listens a moment before its SIGTERM
    // handler is in place, and an earlier SIGTERM would end it without a shutdown checkpoint.)
    const proc = await startServe(fx);
    expect((await signedEncrypt(fx, proc.port)).status).to.equal(200);
    proc.child.kill('SIGTERM');
    await proc.exited;
    const r = await verify(fx, fx.auditDir, '--witness', witness);
    expect(r.code, r.out).to.equal(0);
  });

  describe('a log cut short', () => {
    let fx: ServeFixture;
    let witness: string;
    let own: TestToken;
    after(() => own?.cleanup());
    before(async () => {
      own = createTestToken();
      witness = path.join(own.dir, 'witness', 'checkpoints.log');
      // Small files, so that the log rotates (there is a "newest file" to delete), and a checkpoint
      // every second, so that one falls inside the active file.
      fx = await serveFixture(own, path.join(own.dir, 'cut'), { witnessFile: witness, maxFileBytes: 16 * 1024, checkpointIntervalSeconds: 1 });
      const proc = await startServe(fx);
      for (let i = 0; i < 60; i++) expect((await signedEncrypt(fx, proc.port)).status).to.equal(200);
      const witnessed = () => (fs.existsSync(witness) ? fs.readFileSync(witness, 'utf8').split('\n').filter((l) => l.includes('"reason":"interval"')).length : 0);
      const before = witnessed();
      for (let i = 0; i < 600 && witnessed() === before; i++) await new Promise((r) => setTimeout(r, 50)); // bounded poll on the witness
      expect(witnessed(), 'an interval checkpoint was witnessed').to.be.greaterThan(before);
      expect((await signedEncrypt(fx, proc.port)).status).to.equal(200);
      proc.child.kill('SIGTERM');
      await proc.exited;
      const whole = await verify(fx, fx.auditDir, '--witness', witness);
      expect(whole.code, whole.out).to.equal(0);
    });

    it('the newest audit file deleted: exit 0 on the files alone, exit 5 (truncated) with the witness', async () => {
      const copy = path.join(own.dir, 'copy-deleted');
      fs.cpSync(fx.auditDir, copy, { recursive: true });
      const rotated = fs.readdirSync(copy).filter((n) => n !== 'audit.log' && n.endsWith('.log'));
      expect(rotated.length, 'the log rotated').to.be.greaterThan(0);
      fs.rmSync(path.join(copy, 'audit.log'));
      expect((await verify(fx, copy)).code).to.equal(0);
      const r = await verify(fx, copy, '--witness', witness);
      expect(r.code, r.out).to.equal(5);
      expect(r.out).to.match(/truncated/);
    });

    it('a file cut right after a signed checkpoint: exit 0 on the files alone, exit 5 with the witness', async () => {
      const copy = path.join(own.dir, 'copy-cut');
      fs.cpSync(fx.auditDir, copy, { recursive: true });
      const file = path.join(copy, 'audit.log');
      const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
      // The last interval checkpoint (followed by a request and the shutdown checkpoint): everything after it goes.
      const recs = lines.map((l) => JSON.parse(l) as { type: string; reason?: string });
      let cut = -1;
      recs.forEach((r, i) => {
        if (r.type === 'checkpoint' && r.reason === 'interval') cut = i;
      });
      expect(cut).to.be.greaterThan(0);
      expect(cut).to.be.lessThan(lines.length - 2);
      fs.writeFileSync(file, lines.slice(0, cut + 1).map((l) => l + '\n').join(''));
      expect((await verify(fx, copy)).code).to.equal(0);
      const r = await verify(fx, copy, '--witness', witness);
      expect(r.code, r.out).to.equal(5);
      // --expect-seq with the last checkpoint's seq (what the metric shows) finds it as well.
      const lastSeq = JSON.parse(fs.readFileSync(witness, 'utf8').trim().split('\n').at(-1)!).seq as number;
      expect((await verify(fx, copy, '--expect-seq', String(lastSeq))).code).to.equal(5);
    });
  });
});
