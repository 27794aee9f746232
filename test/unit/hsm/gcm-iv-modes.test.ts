import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { XksError } from '../../../src/errors/xks-error';
import { planGcmEncrypt, type GcmIvMode } from '../../../src/hsm/gcm-iv-modes';

const PT = 10;
const ct = Buffer.alloc(PT, 0xc1);
const tag = Buffer.alloc(16, 0x7a);
const noProxyIv = () => expect.fail('only the proxy mode draws a proxy IV') as never;

function failure(mode: GcmIvMode, out: Buffer, prepare?: (paramsIv: Buffer) => void): XksError {
  const plan = planGcmEncrypt(mode, PT, () => randomBytes(12));
  prepare?.(plan.paramsIv);
  try {
    plan.finish(out);
  } catch (e) {
    expect(e).to.be.instanceOf(XksError);
    expect((e as XksError).errorName).to.equal('InternalException');
    return e as XksError;
  }
  return expect.fail('finish should have failed closed') as never;
}

describe('GCM IV modes (hsm.ivMode)', () => {
  it("'proxy': passes the proxy's IV, expects ciphertext || tag, reports that IV", () => {
    const proxyIv = randomBytes(12);
    const plan = planGcmEncrypt('proxy', PT, () => proxyIv);
    expect(plan.paramsIv).to.equal(proxyIv);
    expect(plan.outputBytes).to.equal(PT + 16);
    const r = plan.finish(Buffer.concat([ct, tag]));
    expect(r).to.deep.equal({ ciphertext: ct, tag, iv: proxyIv });
    expect(failure('proxy', Buffer.concat([ct, tag, randomBytes(12)])).detail).to.match(/C_Encrypt returned 38 bytes for 10 .*"hsm-appended"/);
  });

  it("'hsm-params': a zero-filled 12-byte buffer, read back after the call; a copy is reported", () => {
    const plan = planGcmEncrypt('hsm-params', PT, noProxyIv);
    expect(plan.paramsIv).to.deep.equal(Buffer.alloc(12));
    expect(plan.outputBytes).to.equal(PT + 16);
    const hsmIv = randomBytes(12);
    hsmIv.copy(plan.paramsIv); // what the HSM does through pIv
    const r = plan.finish(Buffer.concat([ct, tag]));
    expect(r).to.deep.equal({ ciphertext: ct, tag, iv: hsmIv });
    plan.paramsIv.fill(0);
    expect(r.iv.equals(hsmIv), 'the result does not alias the parameter buffer').to.equal(true);
  });

  it("'hsm-params' fails closed when the HSM wrote no IV, or the output is not ciphertext || tag", () => {
    expect(failure('hsm-params', Buffer.concat([ct, tag])).detail).to.match(/hsm\.ivMode "hsm-params" does not match the HSM: .*all zero/);
    expect(failure('hsm-params', Buffer.concat([ct, tag, randomBytes(12)]), (iv) => randomBytes(12).copy(iv)).detail).to.match(/returned 38 bytes/);
  });

  for (const ivBytes of [12, 16]) {
    it(`'hsm-appended': an empty IV, room for 16 more bytes; splits off a ${ivBytes}-byte IV`, () => {
      const plan = planGcmEncrypt('hsm-appended', PT, noProxyIv);
      expect(plan.paramsIv).to.have.length(0);
      expect(plan.outputBytes).to.equal(PT + 16 + 16);
      const hsmIv = randomBytes(ivBytes);
      expect(plan.finish(Buffer.concat([ct, tag, hsmIv]))).to.deep.equal({ ciphertext: ct, tag, iv: hsmIv });
    });
  }

  for (const extra of [0, 1, 8, 13, 15]) {
    it(`'hsm-appended' fails closed on ${extra} bytes after the tag`, () => {
      expect(failure('hsm-appended', Buffer.concat([ct, tag, randomBytes(extra)])).detail).to.match(
        new RegExp(`hsm\\.ivMode "hsm-appended" does not match the HSM: .*so ${extra} bytes after the tag`),
      );
    });
  }

  it("'hsm-appended' fails closed on an all-zero appended IV", () => {
    expect(failure('hsm-appended', Buffer.concat([ct, tag, Buffer.alloc(12)])).detail).to.match(/appended to the output is all zero/);
  });

  it('every plan is fresh: new proxy IV, new zero-filled buffer', () => {
    let n = 0;
    const a = planGcmEncrypt('proxy', PT, () => Buffer.alloc(12, ++n));
    const b = planGcmEncrypt('proxy', PT, () => Buffer.alloc(12, ++n));
    expect(a.paramsIv.equals(b.paramsIv)).to.equal(false);
    expect(planGcmEncrypt('hsm-params', PT, noProxyIv).paramsIv).not.to.equal(planGcmEncrypt('hsm-params', PT, noProxyIv).paramsIv);
  });
});
