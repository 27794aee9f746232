import { expect } from 'chai';
import { canonicalJson, recordHash, sealRecord } from '../../../src/audit/canonical';

describe('audit canonical JSON', () => {
  it('sorts keys at every level, drops undefined members, no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: undefined, x: 'é' }], c: null }, u: undefined })).to.equal('{"a":{"c":null,"d":[3,{"x":"é","z":1}]},"b":1}');
  });

  it('orders array-index keys like any other key (by code units)', () => {
    expect(canonicalJson({ b: 1, 10: 'x', 2: 'y', a: 0 })).to.equal('{"10":"x","2":"y","a":0,"b":1}');
  });

  it('is stable through a parse: the hash of a sealed line recomputes from the parsed record', () => {
    const { line, hash } = sealRecord({ seq: 3, type: 'xks', text: 'line\nbreak "quoted" \u2028', n: 1.25 });
    const parsed = JSON.parse(line);
    expect(parsed.hash).to.equal(hash);
    expect(recordHash(parsed)).to.equal(hash);
    expect(line.endsWith(`,"hash":"${hash}"}`)).to.equal(true);
  });
});
