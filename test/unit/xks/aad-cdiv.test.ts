import { expect } from 'chai';
import { buildGcmAad } from '../../../src/xks/aad';
import { computeCdiv } from '../../../src/xks/cdiv';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('AAD construction (spec Encrypt, ciphertextMetadata)', () => {
  it('is uint16be(len aad) || aad || uint8(len metadata) || metadata', () => {
    const out = buildGcmAad(Buffer.from('abc'), Buffer.from('m1'));
    expect(out.toString('hex')).to.equal('0003' + Buffer.from('abc').toString('hex') + '02' + Buffer.from('m1').toString('hex'));
  });

  it('encodes absent fields as zero lengths with no bytes', () => {
    expect(buildGcmAad(undefined, undefined).toString('hex')).to.equal('000000');
    expect(buildGcmAad(Buffer.from('x'), undefined).toString('hex')).to.equal('0001' + '78' + '00');
    expect(buildGcmAad(undefined, Buffer.from('x')).toString('hex')).to.equal('0000' + '01' + '78');
  });

  it('keeps an aad/metadata swap from producing the same AAD', () => {
    const m = Buffer.from('key_version=1');
    expect(buildGcmAad(undefined, m).equals(buildGcmAad(m, undefined))).to.equal(false);
  });

  it('handles the spec maximum of 8192 AAD bytes and 20 metadata bytes, and refuses more metadata', () => {
    const out = buildGcmAad(Buffer.alloc(8192, 1), Buffer.alloc(20, 2));
    expect(out.length).to.equal(2 + 8192 + 1 + 20);
    expect(out.readUInt16BE(0)).to.equal(8192);
    expect(out[2 + 8192]).to.equal(20);
    expect(() => buildGcmAad(undefined, Buffer.alloc(21))).to.throw(RangeError);
  });
});

describe('CDIV (spec Appendix C)', () => {
  it('reproduces the spec worked example exactly', () => {
    const cdiv = computeCdiv({
      aad: hex('70 72 6f 6a 65 63 74 3d 6e 69 6c 65 2c 64 65 70 61 72 74 6d 65 6e 74 3d 6d 61 72 6b 65 74 69 6e 67'),
      ciphertextMetadata: hex('6b 65 79 5f 76 65 72 73 69 6f 6e 3d 31'),
      iv: hex('1c ca e5 47 0f 39 70 02 54 77 90 31'),
      ciphertext: hex('82 1c 64 2b 5b 71 78 33 67 de af 18'),
      tag: hex('bc 1c 4d da 77 07 d6 81 24 47 c5 95 5e 99 b2 61'),
    });
    expect(cdiv).to.equal('qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=');
  });

  it('matches the Base64 fields of the spec Encrypt example', () => {
    const b = (s: string) => Buffer.from(s, 'base64');
    const cdiv = computeCdiv({
      aad: b('cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n'),
      ciphertextMetadata: b('a2V5X3ZlcnNpb249MQ=='),
      iv: b('HMrlRw85cAJUd5Ax'),
      ciphertext: b('ghxkK1txeDNn3q8Y'),
      tag: b('vBxN2ncH1oEkR8WVXpmyYQ=='),
    });
    expect(cdiv).to.equal('qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=');
  });

  it('treats absent aad and metadata as empty', () => {
    const iv = Buffer.alloc(12, 1);
    const ct = Buffer.alloc(5, 2);
    const tag = Buffer.alloc(16, 3);
    expect(computeCdiv({ iv, ciphertext: ct, tag })).to.equal(computeCdiv({ aad: Buffer.alloc(0), ciphertextMetadata: Buffer.alloc(0), iv, ciphertext: ct, tag }));
    expect(computeCdiv({ iv, ciphertext: ct, tag })).not.to.equal(computeCdiv({ aad: Buffer.from('a'), iv, ciphertext: ct, tag }));
  });
});
