import { expect } from 'chai';
import { IvSource } from '../../../src/hsm/iv-source';

describe('IvSource', () => {
  it('hands out 12-byte IVs that never repeat across pool refills', () => {
    const ivs = new IvSource(12);
    const seen = new Set<string>();
    // 4096 / 12 = 341 IVs per pool: 3000 crosses several refills.
    for (let i = 0; i < 3000; i++) {
      const iv = ivs.next();
      expect(iv.length).to.equal(12);
      seen.add(iv.toString('hex'));
    }
    expect(seen.size).to.equal(3000);
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
