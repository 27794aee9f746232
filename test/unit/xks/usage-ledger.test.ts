/**
 * The usage ledger on a real folder: counted before use, survives a new process (a new ledger
 * on the same folder), and two writers on one file (two workers) never exceed the limit together.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ledgerFile, UsageLedger } from '../../../src/xks/usage-ledger';
import { until } from '../../helpers/until';

describe('UsageLedger (encryption counts per key version)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-ledger-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes a block before the first encryption of it is spent', () => {
    const l = new UsageLedger({ dir, reserveBlock: 100 });
    expect(l.tryEncrypt('k', 0, 1_000)).to.equal(true);
    // What a kill -9 right now would leave on disk: the whole block, never less than was used.
    expect(new UsageLedger({ dir, reserveBlock: 100 }).usageOf('k').get(0)?.encryptions).to.equal(100);
    for (let i = 0; i < 99; i++) l.tryEncrypt('k', 0, 1_000);
    expect(fs.readFileSync(ledgerFile(dir, 'k'), 'utf8').trim().split('\n')).to.have.length(1);
    l.tryEncrypt('k', 0, 1_000);
    expect(new UsageLedger({ dir, reserveBlock: 100 }).usageOf('k').get(0)?.encryptions).to.equal(200);
  });

  it('a restarted process continues from the count on disk, up to the limit and not beyond', () => {
    const first = new UsageLedger({ dir, reserveBlock: 10 });
    for (let i = 0; i < 25; i++) expect(first.tryEncrypt('k', 3, 45)).to.equal(true);
    const second = new UsageLedger({ dir, reserveBlock: 10 });
    let allowed = 0;
    while (second.tryEncrypt('k', 3, 45)) allowed++;
    // The first process reserved 30 (3 blocks); the second may spend the 15 left, no more.
    expect(allowed).to.equal(15);
    expect(second.usageOf('k').get(3)?.encryptions).to.equal(45);
  });

  it('two writers on one ledger (two workers) share one limit exactly', () => {
    const a = new UsageLedger({ dir, reserveBlock: 7 });
    const b = new UsageLedger({ dir, reserveBlock: 7 });
    let allowed = 0;
    // Interleaved so that each reserves while the other holds a block it has not spent.
    for (let i = 0; i < 100; i++) {
      if (a.tryEncrypt('k', 1, 50)) allowed++;
      if (b.tryEncrypt('k', 1, 50)) allowed++;
    }
    expect(allowed).to.equal(50);
  });

  it('decrypt counts reach the file on flush and per version', () => {
    const l = new UsageLedger({ dir, reserveBlock: 10, now: () => 1_700_000_000_000 });
    l.recordDecrypt('k', 0);
    l.recordDecrypt('k', 0);
    l.recordDecrypt('k', 2);
    expect(new UsageLedger({ dir, reserveBlock: 10 }).usageOf('k').size).to.equal(0);
    l.flush();
    const u = new UsageLedger({ dir, reserveBlock: 10 }).usageOf('k');
    expect(u.get(0)).to.include({ decrypts: 2, lastDecryptMs: 1_700_000_000_000 });
    expect(u.get(2)?.decrypts).to.equal(1);
  });

  it('a torn last line (a crash mid-write) counts nothing and breaks nothing', () => {
    fs.writeFileSync(ledgerFile(dir, 'k'), 'e 0 10 1 x\ne 0 1');
    const l = new UsageLedger({ dir, reserveBlock: 10 });
    expect(l.usageOf('k').get(0)?.encryptions).to.equal(10);
    // The next record is not swallowed by the torn one.
    expect(l.tryEncrypt('k', 0, 1_000)).to.equal(true);
    expect(new UsageLedger({ dir, reserveBlock: 10 }).usageOf('k').get(0)?.encryptions).to.equal(20);
  });

  describe('reserveEncryption with a ledger file (the request path)', () => {
    /** Encryptions so far, as a new process would read them from disk. */
    const onDisk = (version: number) => new UsageLedger({ dir, reserveBlock: 1 }).usageOf('k').get(version)?.encryptions ?? 0;

    it('reserves the next block in the background once a quarter of the block is left, so that the block boundary does not wait', async () => {
      const l = new UsageLedger({ dir, reserveBlock: 100 });
      expect(await l.reserveEncryption('k', 0, 10_000)).to.equal(true);
      expect(onDisk(0)).to.equal(100);
      for (let i = 1; i < 75; i++) expect(await l.reserveEncryption('k', 0, 10_000)).to.equal(true);
      expect(onDisk(0)).to.equal(100);
      // The 76th leaves 24 (under the low water of 25): the next block is written behind it.
      const spent = l.reserveEncryption('k', 0, 10_000);
      expect(await spent).to.equal(true);
      await until(async () => onDisk(0) === 200, 5000, 'the next block on disk');
      // Counted before it is spent, whatever a crash leaves: never less on disk than used.
      for (let i = 76; i < 200; i++) expect(await l.reserveEncryption('k', 0, 10_000)).to.equal(true);
      // The block reserved ahead of the last one may still be on its way: let it land.
      await l.settled();
      expect(onDisk(0)).to.be.at.least(200);
    });

    it('two writers on one ledger share one limit exactly, interleaved and concurrent', async () => {
      const a = new UsageLedger({ dir, reserveBlock: 8 });
      const b = new UsageLedger({ dir, reserveBlock: 8 });
      const results = await Promise.all(Array.from({ length: 120 }, (_, i) => (i % 2 === 0 ? a : b).reserveEncryption('k', 1, 50)));
      await Promise.all([a.settled(), b.settled()]);
      // Encryptions done: exactly the limit. (What is reserved on disk may pass it: a reservation is
      // an upper bound, and what a writer may spend of it is capped by what was reserved before.)
      expect(results.filter(Boolean)).to.have.length(50);
    });

    it('a read of the file while a reservation is being flushed (metrics, decrypt counts) does not make it look refused', async () => {
      const l = new UsageLedger({ dir, reserveBlock: 4 });
      let reading = true;
      const reader = (async () => {
        while (reading) {
          l.usageOf('k');
          await new Promise((r) => setImmediate(r));
        }
      })();
      const results: boolean[] = [];
      for (let i = 0; i < 200; i++) results.push(await l.reserveEncryption('k', 2, 1_000_000));
      reading = false;
      await reader;
      await l.settled();
      expect(results.every(Boolean), `refused: ${results.filter((r) => !r).length}`).to.equal(true);
    });
  });
});
