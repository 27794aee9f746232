/**
 * The end of the audit log: a log whose newest file was deleted, or that was cut right after a
 * signed checkpoint, still ends in a valid signature. The witness (audit.witnessFile: every
 * checkpoint line, written after the log is synced) and --expect-seq give the verifier the end to
 * hold it against. And commit(): a record is in the file when its promise resolves.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { rotatedFiles, type AuditLog } from '../../../src/audit/audit-log';
import { sealRecord } from '../../../src/audit/canonical';
import { verifyAuditFiles, type VerifyOptions } from '../../../src/audit/verify';
import { auditFixture, requestRecord, type AuditFixture } from './helpers';

const parse = (l: string) => JSON.parse(l) as Record<string, any>;

describe('audit log end: witness and --expect-seq', () => {
  let fx: AuditFixture;
  let witnessFile: string;
  beforeEach(async () => {
    fx = await auditFixture();
    witnessFile = path.join(fx.dir, 'elsewhere', 'witness.log');
  });
  afterEach(() => fx.cleanup());

  const verify = async (opts: VerifyOptions = {}) => verifyAuditFiles([path.dirname(fx.file)], await fx.key(), opts);

  /** start, 3 records, interval checkpoint, 3 records, shutdown checkpoint. */
  async function writeWithCheckpoints(extra = {}): Promise<AuditLog> {
    const log = fx.open({ witnessFile, ...extra });
    for (let i = 0; i < 3; i++) log.write(requestRecord());
    log.checkpoint('interval');
    for (let i = 0; i < 3; i++) log.write(requestRecord());
    await log.close();
    return log;
  }

  it('copies every checkpoint line, byte for byte, to the witness file', async () => {
    await writeWithCheckpoints();
    const cps = fx.lines().filter((l) => parse(l).type === 'checkpoint');
    expect(cps).to.have.length(2);
    expect(fs.readFileSync(witnessFile, 'utf8')).to.equal(cps.map((l) => l + '\n').join(''));
  });

  it('an untouched log verifies against its witness (exit 0) and names the newest witnessed checkpoint', async () => {
    const log = await writeWithCheckpoints();
    const r = await verify({ witnessFiles: [witnessFile], expectSeq: log.stats.lastCheckpointSeq! });
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(0);
    expect(r.witnessed?.seq).to.equal(log.stats.lastCheckpointSeq);
    expect(r.lastSeq).to.equal(log.stats.lastCheckpointSeq);
  });

  it('a file cut right after a signed checkpoint: exit 0 without the witness, exit 5 (truncated) with it', async () => {
    const log = await writeWithCheckpoints();
    const lines = fx.lines();
    const cut = lines.findIndex((l) => parse(l).type === 'checkpoint' && parse(l).reason === 'interval');
    fx.writeLines(lines.slice(0, cut + 1));
    // What the files alone say (the attack the witness is for): a complete, signed log.
    expect((await verify()).exitCode).to.equal(0);
    const r = await verify({ witnessFiles: [witnessFile] });
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(5);
    expect(r.problem).to.include({ kind: 'truncated', seq: cut + 1 });
    expect(r.problem!.message).to.include(`seq ${log.stats.lastCheckpointSeq}`);
    // The metric's last checkpoint seq does the same without a witness file.
    expect((await verify({ expectSeq: log.stats.lastCheckpointSeq! })).exitCode).to.equal(5);
  });

  it('the newest file deleted after a rotation: exit 0 without the witness, exit 5 with it', async () => {
    const log = fx.open({ witnessFile, maxFileBytes: 4096 });
    for (let i = 0; i < 40; i++) {
      log.write(requestRecord());
      log.flush();
    }
    await log.close();
    const rotated = rotatedFiles(fx.file);
    expect(rotated.length).to.be.greaterThan(0);
    fs.rmSync(fx.file);
    expect((await verify()).exitCode).to.equal(0);
    const r = await verify({ witnessFiles: [witnessFile] });
    expect(r.exitCode, JSON.stringify(r.problem)).to.equal(5);
    expect(r.problem!.kind).to.equal('truncated');
  });

  it('a shipped copy of the stdout stream serves as the witness (other lines are ignored)', async () => {
    let out = '';
    const stdout = new Writable({
      write(chunk, _enc, cb) {
        out += chunk.toString();
        cb();
      },
    });
    const log = fx.open({ stdout });
    for (let i = 0; i < 3; i++) log.write(requestRecord());
    log.checkpoint('interval');
    log.write(requestRecord());
    await log.close();
    const shipped = path.join(fx.dir, 'shipped.log');
    fs.writeFileSync(shipped, out);
    const lines = fx.lines();
    fx.writeLines(lines.slice(0, lines.findIndex((l) => parse(l).type === 'checkpoint') + 1));
    expect((await verify({ witnessFiles: [shipped] })).exitCode).to.equal(5);
  });

  it('a forged witness line is refused (exit 1), never trusted', async () => {
    await writeWithCheckpoints();
    const w = fs.readFileSync(witnessFile, 'utf8').trim().split('\n').map(parse);
    // Claim a later checkpoint: re-sealed with a higher seq, but the JWS still says the old one.
    const { hash: _h, ...rest } = w[1]!;
    fs.appendFileSync(witnessFile, sealRecord({ ...rest, seq: rest.seq + 10 }).line + '\n');
    const r = await verify({ witnessFiles: [witnessFile] });
    expect(r.exitCode).to.equal(1);
    expect(r.problem!.kind).to.equal('bad-signature');
  });

  it('a log replaced by a fresh chain (all files deleted, new stream) is flagged: the witness holds no checkpoint of it', async () => {
    await writeWithCheckpoints();
    const w = fs.readFileSync(witnessFile, 'utf8');
    fs.rmSync(path.dirname(fx.file), { recursive: true });
    fs.rmSync(witnessFile);
    await writeWithCheckpoints();
    fs.writeFileSync(witnessFile, w);
    const r = await verify({ witnessFiles: [witnessFile] });
    const warnings = r.warnings.map((x) => x.message).join('\n');
    expect(warnings).to.match(/no checkpoint of this stream/);
    expect(warnings).to.match(/1 other audit stream/);
  });
});

describe('audit log commit(): answered only once written', () => {
  let fx: AuditFixture;
  beforeEach(async () => {
    fx = await auditFixture();
  });
  afterEach(() => fx.cleanup());

  it('resolves once the record is in the file, one write for concurrent commits', async () => {
    const log = fx.open();
    const recs = Array.from({ length: 20 }, () => requestRecord());
    let writes = 0;
    const real = fs.writeSync;
    (fs as any).writeSync = (...args: any[]) => {
      writes++;
      return (real as any)(...args);
    };
    try {
      await Promise.all(recs.map((r) => log.commit(r)));
    } finally {
      (fs as any).writeSync = real;
    }
    const text = fs.readFileSync(fx.file, 'utf8');
    for (const r of recs) expect(text).to.include(`"kmsRequestId":"${r.kmsRequestId}"`);
    expect(writes).to.equal(1);
    await log.close();
  });

  it('with durability fsync, also syncs before resolving', async () => {
    const log = fx.open({ durability: 'fsync' });
    let syncs = 0;
    const real = fs.fdatasyncSync;
    (fs as any).fdatasyncSync = (fd: number) => {
      syncs++;
      real(fd);
    };
    try {
      await log.commit(requestRecord());
    } finally {
      (fs as any).fdatasyncSync = real;
    }
    expect(syncs).to.equal(1);
    await log.close();
  });

  it('rejects when the record cannot be written (disk full), and counts the loss', async () => {
    const log = fx.open();
    const priv = log as unknown as { fd: number };
    const good = priv.fd;
    priv.fd = fs.openSync('/dev/full', 'a');
    try {
      let err: unknown;
      await log.commit(requestRecord()).catch((e: unknown) => (err = e));
      expect(String(err)).to.match(/audit write failed \(ENOSPC\)/);
      expect(log.stats.writeErrors).to.equal(1);
    } finally {
      fs.closeSync(priv.fd);
      priv.fd = good;
    }
    await log.close();
  });
});
