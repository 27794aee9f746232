import { expect } from 'chai';
import { decodeVersionMetadata, encodeVersionMetadata } from '../../../src/xks/version-metadata';

describe('key version ciphertextMetadata (format 0x01)', () => {
  it('is 0x01 || uint32be(version), within the spec\'s 20 bytes, and reads back', () => {
    expect(encodeVersionMetadata(1).toString('hex')).to.equal('0100000001');
    expect(encodeVersionMetadata(0xffffffff).toString('hex')).to.equal('01ffffffff');
    for (const v of [1, 2, 255, 256, 65536, 0xffffffff]) expect(decodeVersionMetadata(encodeVersionMetadata(v))).to.equal(v);
  });

  it('version 0 (the original key) is never written: it is the absence of metadata', () => {
    expect(() => encodeVersionMetadata(0)).to.throw(RangeError);
    expect(decodeVersionMetadata(Buffer.from('0100000000', 'hex'))).to.equal(undefined);
  });

  it('anything but the canonical 5 bytes of format 0x01 is not ours', () => {
    for (const hex of ['', '01', '01000001', '010000000100', '0200000001', '0000000001', '76302e302e31']) {
      expect(decodeVersionMetadata(Buffer.from(hex, 'hex')), hex).to.equal(undefined);
    }
  });

  it('refuses versions that do not fit', () => {
    for (const v of [-1, 1.5, 2 ** 32]) expect(() => encodeVersionMetadata(v)).to.throw(RangeError);
  });
});
