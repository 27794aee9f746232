/**
 * An HsmBackend that forwards every call to another one. Decorators (metering, and fault
 * injection or counting in tests) extend it and override only what they change.
 */
import type { HsmCallStats } from './call-latency';
import type { GcmEncryptResult, HsmBackend, KeyInfo, PoolStats, TokenInfo } from './backend';
import type { KeyVersionObject } from './key-versions';

export class DelegatingBackend implements HsmBackend {
  constructor(readonly inner: HsmBackend) {}

  describeKey(label: string): Promise<KeyInfo> {
    return this.inner.describeKey(label);
  }

  encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<GcmEncryptResult> {
    return this.inner.encrypt(label, plaintext, aad);
  }

  decrypt(label: string, ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer> {
    return this.inner.decrypt(label, ciphertext, iv, tag, aad);
  }

  tokenInfo(): TokenInfo {
    return this.inner.tokenInfo();
  }

  poolStats(): PoolStats {
    return this.inner.poolStats();
  }

  callStats(): HsmCallStats | undefined {
    return this.inner.callStats?.();
  }

  onAvailabilityChange(listener: (available: boolean) => void): void {
    this.inner.onAvailabilityChange?.(listener);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  hmacSign(keyLabel: string, data: Buffer): Promise<Buffer> {
    return this.inner.hmacSign(keyLabel, data);
  }

  hmacVerify(keyLabel: string, data: Buffer, mac: Buffer): Promise<boolean> {
    return this.inner.hmacVerify(keyLabel, data, mac);
  }

  readDataObjects(label: string): Promise<Buffer[]> {
    return this.inner.readDataObjects(label);
  }

  writeDataObject(label: string, value: Buffer): Promise<void> {
    return this.inner.writeDataObject(label, value);
  }

  listKeyVersions(label: string): Promise<KeyVersionObject[]> {
    return this.inner.listKeyVersions(label);
  }

  createKeyVersion(label: string, from?: number): Promise<number> {
    return this.inner.createKeyVersion(label, from);
  }

  destroyKeyVersion(label: string, version: number): Promise<void> {
    return this.inner.destroyKeyVersion(label, version);
  }
}
