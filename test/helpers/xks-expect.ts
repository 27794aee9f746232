/** Assertions on XksErrors and small tampering helpers shared by the HSM tests. */
import { expect } from 'chai';
import { XksError, type ErrorName } from '../../src/errors/xks-error';

/** The XksError `p` rejects with (fails the test if it resolves or rejects with anything else). */
export async function xksErrorOf(p: Promise<unknown>): Promise<XksError> {
  try {
    await p;
  } catch (e) {
    expect(e, String(e)).to.be.instanceOf(XksError);
    return e as XksError;
  }
  throw new Error('expected an XksError, got success');
}

export async function expectXks(p: Promise<unknown>, errorName: ErrorName): Promise<XksError> {
  const e = await xksErrorOf(p);
  expect(e.errorName, e.detail).to.equal(errorName);
  return e;
}

/** A copy of `b` with one bit of byte `i` flipped. */
export function flip(b: Buffer, i = 0): Buffer {
  const c = Buffer.from(b);
  c[i % c.length] ^= 0x01;
  return c;
}
