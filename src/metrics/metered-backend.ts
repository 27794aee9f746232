/**
 * A decorator that times every HSM backend call for the meter (xks_hsm_operation_duration_seconds),
 * so that the PKCS#11 backend itself knows nothing about metrics. The time includes the wait for
 * a pool session: that wait is part of what the request pays.
 */
import { toXksError } from '../errors/xks-error';
import type { GcmEncryptResult, HsmBackend, KeyInfo } from '../hsm/backend';
import { DelegatingBackend } from '../hsm/delegating-backend';
import type { HsmOperation, Meter } from './meter';

export class MeteredBackend extends DelegatingBackend {
  constructor(
    inner: HsmBackend,
    private readonly meter: Meter,
  ) {
    super(inner);
  }

  private async timed<T>(op: HsmOperation, f: () => Promise<T>): Promise<T> {
    const start = process.hrtime.bigint();
    let outcome = 'ok';
    try {
      return await f();
    } catch (e) {
      // errorName is from a fixed table: a bounded label.
      outcome = toXksError(e).errorName;
      throw e;
    } finally {
      this.meter.hsmOperation(op, Number(process.hrtime.bigint() - start) / 1e9, outcome);
    }
  }

  override describeKey(label: string): Promise<KeyInfo> {
    return this.timed('describe_key', () => this.inner.describeKey(label));
  }

  override encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<GcmEncryptResult> {
    return this.timed('encrypt', () => this.inner.encrypt(label, plaintext, aad));
  }

  override decrypt(label: string, ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer> {
    return this.timed('decrypt', () => this.inner.decrypt(label, ciphertext, iv, tag, aad));
  }
}
