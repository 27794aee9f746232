/**
 * The audit log writer and `audit verify`: an untouched log verifies; every kind of tampering is
 * found and named at the right line; rotation keeps one chain across files; a crash mid-write
 * leaves a torn tail that is reported, and a restart acknowledges it and continues the chain.
 */
import { expect } from 'chai';
import { compactVerify, importJWK } from 'jose';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { rotatedFiles } from '../../../src/audit/audit-log';
import { GENESIS_PREV_HASH, recordHash, sealRecord } from '../../../src/audit/canonical';
import { generateSigningKeyPair, loadSigningKey, loadVerificationKey, signCompact } from '../../../src/audit/signing';
import { verifyAuditFiles, type VerifyReport } from '../../../src/audit/verify';
import { auditFixture, requestRecord, type AuditFixture } from './helpers';

const parse = (l: string) => JSON.parse(l) as Record<string, any>;
/** Re-seal a record after changing it, as an attacker who knows the format would. */
const reseal = (r: Record<string, unknown>) => sealRecord(Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'hash'))).line;

describe('audit log', () => {
  let fx: AuditFixture;
  beforeEach(async () => {
    fx = await auditFixture();
  });
  afterEach(() => fx.cleanup());

  /** start, 5 xks records, an admin action, a checkpoint, 2 more records, shutdown checkpoint. */
  async function writeSample(): Promise<string[]> {
    const log = fx.open();
    for (let i = 0; i < 5; i++) log.write(requestRecord());
    log.writeAdmin({ operator: 'alice', action: 'killswitch.engage', scope: 'keyStore:tenant-a', reason: 'incident 42', outcome: 'ok' });
    log.checkpoint('interval');
    log.write(requestRecord({ outcome: 'error', errorName: 'KeyNotFoundException', status: 404 }));
    log.write(requestRecord());
    await log.close();
    return fx.lines();
  }

  async function verify(files: string[] = [path.dirname(fx.file)], opts = {}): Promise<VerifyReport> {
    return verifyAuditFiles(files, await fx.key(), opts);
  }

  it('chains every record to the one before it and seals it with its hash', async () => {
    const lines = await writeSample();
    const recs = lines.map(parse);
    expect(recs.map((r) => r.type)).to.deep.equal(['start', 'xks', 'xks', 'xks', 'xks', 'xks', 'admin', 'checkpoint', 'xks', 'xks', 'checkpoint']);
    expect(recs.map((r) => r.seq)).to.deep.equal([...recs.keys()]);
    expect(recs[0]!.prevHash).to.equal(GENESIS_PREV_HASH);
    for (let i = 0; i < recs.length; i++) {
      expect(recordHash(recs[i]!)).to.equal(recs[i]!.hash);
      if (i > 0) expect(recs[i]!.prevHash).to.equal(recs[i - 1]!.hash);
    }
    expect(recs[1]).to.include({ api: 'Encrypt', keyStore: 'tenant-a', externalKeyId: 'k1', outcome: 'ok', status: 200, latencyMs: 1.5, hsmMs: 0.7, kmsOperation: 'Encrypt' });
    expect(recs[1]!.kmsRequestId).to.match(/^req-/);
    expect(recs[6]).to.include({ operator: 'alice', action: 'killswitch.engage', scope: 'keyStore:tenant-a', reason: 'incident 42', outcome: 'ok' });
    expect(recs[8]).to.include({ outcome: 'error', errorName: 'KeyNotFoundException', status: 404 });
    expect(recs[10]).to.include({ type: 'checkpoint', reason: 'shutdown' });
  });

  it('signs checkpoints as standard compact JWS over the chain head (verifiable with jose)', async () => {
    const recs = (await writeSample()).map(parse);
    const cp = recs[10]!;
    const pub = JSON.parse(fs.readFileSync(fx.publicFile, 'utf8'));
    const { payload, protectedHeader } = await compactVerify(cp.jws, await importJWK(pub, 'EdDSA'));
    expect(protectedHeader).to.include({ alg: 'EdDSA', kid: pub.kid });
    expect(JSON.parse(Buffer.from(payload).toString())).to.deep.include({ stream: recs[0]!.stream, seq: 9, hash: recs[9]!.hash, reason: 'shutdown' });
  });

  it('accepts an untouched log, with a checkpoint written at close()', async () => {
    await writeSample();
    const r = await verify();
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(0);
    expect(r).to.include({ records: 11, checkpoints: 2, firstSeq: 0, lastSeq: 10 });
    expect(r.lastCheckpoint).to.include({ seq: 10, reason: 'shutdown', line: 11 });
  });

  it('also signs with a P-256 key (ES256)', async () => {
    const priv = path.join(fx.dir, 'es.jwk');
    const pub = path.join(fx.dir, 'es.pub.jwk');
    await generateSigningKeyPair(priv, pub, 'ES256');
    const log = fx.open({ signingKey: loadSigningKey(priv) });
    log.write(requestRecord());
    await log.close();
    const r = await verifyAuditFiles([fx.file], await loadVerificationKey(pub));
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(0);
  });

  describe('finds the first problem and names it', () => {
    it('a modified field (content no longer matches its hash)', async () => {
      const lines = await writeSample();
      lines[3] = lines[3]!.replace('user/Alice', 'user/Mallory');
      fx.writeLines(lines);
      const r = await verify();
      expect(r.exitCode).to.equal(1);
      expect(r.problem).to.include({ kind: 'modified', line: 4, seq: 3, file: 'audit.log' });
    });

    it('a modified record that was re-hashed (its successor chains to the old hash)', async () => {
      const lines = await writeSample();
      lines[2] = reseal({ ...parse(lines[2]!), awsPrincipalArn: 'arn:aws:iam::123456789012:user/Mallory' });
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'modified', line: 3, seq: 2 });
    });

    it('a rewritten chain (every later record re-hashed) is caught by the next signed checkpoint', async () => {
      const lines = await writeSample();
      let prev = parse(lines[1]!).hash as string;
      for (let i = 2; i < lines.length; i++) {
        const r = parse(lines[i]!);
        if (i === 2) r.awsPrincipalArn = 'arn:aws:iam::123456789012:user/Mallory';
        r.prevHash = prev;
        lines[i] = reseal(r);
        prev = parse(lines[i]!).hash;
      }
      fx.writeLines(lines);
      const r = await verify();
      expect(r.exitCode).to.equal(1);
      expect(r.problem!.kind).to.equal('modified');
      expect(r.problem!.line).to.equal(8);
      expect(r.problem!.message).to.match(/seq 0\.\.6 were rewritten/);
    });

    it('a deleted line', async () => {
      const lines = await writeSample();
      lines.splice(4, 1);
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'deleted', line: 5, seq: 5 });
      expect(r.problem!.message).to.match(/seq 4 is missing/);
    });

    it('an inserted forged record with a valid hash', async () => {
      const lines = await writeSample();
      const forged = reseal({ ...parse(lines[3]!), id: 'forged', kmsRequestId: 'forged-request' });
      lines.splice(3, 0, forged);
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'inserted', line: 4, seq: 3 });
    });

    it('an inserted copy of an existing line', async () => {
      const lines = await writeSample();
      lines.splice(6, 0, lines[2]!);
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'inserted', line: 7, seq: 2 });
    });

    it('two swapped lines', async () => {
      const lines = await writeSample();
      [lines[3], lines[4]] = [lines[4]!, lines[3]!];
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'reordered', line: 4, seq: 4 });
    });

    it('records after the last checkpoint are reported as not covered (a truncation there is undetectable)', async () => {
      const lines = await writeSample();
      fx.writeLines(lines.slice(0, 10)); // the shutdown checkpoint is gone
      const r = await verify();
      expect(r.exitCode).to.equal(3);
      expect(r.problem).to.include({ kind: 'uncovered-tail', seq: 8 });
      expect(r.problem!.message).to.match(/2 record\(s\) after the last checkpoint \(seq 7/);
    });

    it('a torn final line (crash mid-write): reported as such, everything before it verified', async () => {
      const lines = await writeSample();
      fs.writeFileSync(fx.file, lines.slice(0, 9).map((l) => l + '\n').join('') + lines[9]!.slice(0, 57));
      const r = await verify();
      expect(r.exitCode).to.equal(4);
      expect(r.problem).to.include({ kind: 'torn-tail', line: 10 });
      expect(r.lastSeq).to.equal(8);
      expect(r.warnings.map((w) => w.kind)).to.deep.equal(['uncovered-tail']);
    });

    it('a checkpoint that does not verify with the auditor key', async () => {
      await writeSample();
      const other = path.join(fx.dir, 'other');
      await generateSigningKeyPair(path.join(other, 'k.jwk'), path.join(other, 'k.pub.jwk'));
      const r = await verifyAuditFiles([fx.file], await loadVerificationKey(path.join(other, 'k.pub.jwk')));
      expect(r.problem).to.include({ kind: 'bad-signature', line: 8, seq: 7 });
    });

    it('a checkpoint forged with another key after rewriting the chain', async () => {
      const lines = await writeSample();
      const other = path.join(fx.dir, 'other');
      await generateSigningKeyPair(path.join(other, 'k.jwk'), path.join(other, 'k.pub.jwk'));
      const cp = parse(lines[7]!);
      const payload = JSON.parse(Buffer.from(cp.jws.split('.')[1], 'base64url').toString());
      lines[7] = reseal({ ...cp, jws: signCompact(loadSigningKey(path.join(other, 'k.jwk')), payload) });
      let prev = parse(lines[7]!).hash;
      for (let i = 8; i < lines.length; i++) {
        const r = parse(lines[i]!);
        r.prevHash = prev;
        lines[i] = reseal(r);
        prev = parse(lines[i]!).hash;
      }
      fx.writeLines(lines);
      const r = await verify();
      expect(r.problem).to.include({ kind: 'bad-signature', line: 8 });
    });

    it('a log whose first records are missing, unless --partial', async () => {
      const lines = await writeSample();
      fx.writeLines(lines.slice(3));
      expect((await verify()).problem).to.include({ kind: 'deleted', line: 1, seq: 3 });
      // The stream id is on start and rotate records; a partial log must begin with one.
      const partial = await verify(undefined, { partial: true });
      expect(partial.problem!.message).to.match(/does not name its stream/);
    });
  });

  it('rotates into new files and keeps one chain across them', async () => {
    const log = fx.open({ maxFileBytes: 4096 });
    for (let i = 0; i < 30; i++) {
      log.write(requestRecord());
      log.flush(); // as the end of an event-loop turn would
    }
    await log.close();
    const rotated = rotatedFiles(fx.file);
    expect(rotated.length).to.be.at.least(2);
    const files = [...rotated, fx.file];
    for (let i = 1; i < files.length; i++) {
      const prevLast = parse(fx.lines(files[i - 1]).at(-1)!);
      const first = parse(fx.lines(files[i])[0]!);
      expect(prevLast).to.include({ type: 'checkpoint', reason: 'rotate' });
      expect(first).to.include({ type: 'rotate', prevHash: prevLast.hash, seq: prevLast.seq + 1, previousFile: path.basename(files[i - 1]!) });
    }
    const r = await verify();
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(0);
    expect(r.files).to.have.length(files.length);
    expect(r.records).to.equal(1 + 30 + 2 * rotated.length + 1);
    // Order comes from the records, not from the names: any order of arguments verifies.
    expect((await verify([...files].reverse())).exitCode).to.equal(0);
    // Older files archived elsewhere: the newer ones verify on their own with --partial.
    expect((await verify([rotated.at(-1)!, fx.file])).problem!.kind).to.equal('deleted');
    expect((await verify([rotated.at(-1)!, fx.file], { partial: true })).exitCode).to.equal(0);
    // A missing middle file is a deletion.
    fs.rmSync(rotated[1]!);
    const gap = await verify();
    expect(gap.problem!.kind).to.equal('deleted');
    expect(gap.problem!.message).to.match(/a whole file may be missing/);
  });

  it('continues the chain across a restart', async () => {
    await writeSample();
    const again = fx.open();
    again.write(requestRecord());
    await again.close();
    const recs = fx.lines().map(parse);
    expect(recs.filter((r) => r.type === 'start')).to.have.length(2);
    expect(recs[11]).to.include({ type: 'start', seq: 11, prevHash: recs[10]!.hash, stream: recs[0]!.stream });
    expect((await verify()).exitCode).to.equal(0);
  });

  it('after a crash mid-write, the restart acknowledges the torn line and the log verifies', async () => {
    const lines = await writeSample();
    fs.writeFileSync(fx.file, lines.slice(0, 9).map((l) => l + '\n').join('') + lines[9]!.slice(0, 40));
    const again = fx.open();
    again.write(requestRecord());
    await again.close();
    const recs = fx.lines();
    const start = parse(recs[10]!);
    expect(start.type).to.equal('start');
    expect(start.prevHash).to.equal(parse(recs[8]!).hash);
    expect(start.recoveredTornLine).to.include({ file: 'audit.log', bytes: 40 });
    const r = await verify();
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(0);
    expect(r.warnings.map((w) => w.kind)).to.deep.equal(['torn-tail']);
    expect(r.warnings[0]!.line).to.equal(10);
  });

  it('refuses to continue a log whose last record was tampered with', async () => {
    const lines = await writeSample();
    lines[10] = lines[10]!.replace('"shutdown"', '"interval"');
    fx.writeLines(lines);
    expect(() => fx.open()).to.throw(/last record does not verify/);
  });

  it('copies every line to the stdout destination, byte for byte', async () => {
    let out = '';
    const sink = new Writable({
      write(c, _e, cb) {
        out += c.toString();
        cb();
      },
    });
    const log = fx.open({ stdout: sink });
    log.write(requestRecord());
    await log.close();
    expect(out).to.equal(fs.readFileSync(fx.file, 'utf8'));
  });
});

describe('audit log: one writer per file', () => {
  let fx: AuditFixture;
  beforeEach(async () => {
    fx = await auditFixture();
  });
  afterEach(() => fx.cleanup());

  it('refuses to open a log that another running process writes, and takes over a dead writer\'s lock', async () => {
    const fs = await import('node:fs');
    fs.mkdirSync(path.dirname(fx.file), { recursive: true });
    // Our parent process is alive and is not us: as if a second proxy held the log.
    fs.writeFileSync(`${fx.file}.lock`, JSON.stringify({ pid: process.ppid }));
    expect(() => fx.open()).to.throw(/in use by process/);
    // A pid that cannot be running (above the kernel's pid_max).
    fs.writeFileSync(`${fx.file}.lock`, JSON.stringify({ pid: 2 ** 30 }));
    const log = fx.open();
    log.write(requestRecord());
    await log.close();
    expect(fs.existsSync(`${fx.file}.lock`)).to.equal(false);
    expect((await verifyAuditFiles([path.dirname(fx.file)], await fx.key(), {})).exitCode).to.equal(0);
  });
});
