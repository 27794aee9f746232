import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { IvSource } from '../../../src/hsm/iv-source';

/** 3000 IVs (4096 / 12 = 341 per pool: several refills), each 12 bytes and never seen before. */
function expectUniqueAcrossRefills(ivs: IvSource): void {
  const seen = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const iv = ivs.next();
    expect(iv.length).to.equal(12);
    seen.add(iv.toString('hex'));
  }
  expect(seen.size, 'an IV repeated').to.equal(3000);
}

describe('IvSource', () => {
  it('hands out 12-byte IVs that never repeat across pool refills', () => {
    expectUniqueAcrossRefills(new IvSource(12));
  });

  it('... a check that catches a source whose refills repeat (it can fail)', () => {
    // Random within a pool, but every refill the same bytes: only crossing refills shows it.
    const once = randomBytes(4092);
    const repeatsEveryRefill = new IvSource(12, (b) => (once.copy(b), b));
    expect(() => expectUniqueAcrossRefills(repeatsEveryRefill)).to.throw(/an IV repeated/);
  });

  it('returns copies: changing one IV changes neither the pool nor the next IV', () => {
    const ivs = new IvSource(12);
    const a = ivs.next();
    const before = Buffer.from(a);
    a.fill(0);
    const b = ivs.next();
    expect(b.equals(before)).to.equal(false);
    expect(b.equals(Buffer.alloc(12))).to.equal(false);
  });
});
