/** The real backend, counting the HSM operations that start (for the drain guarantee). */
import { EventEmitter } from 'node:events';
import type { GcmEncryptResult, HsmBackend, KeyInfo } from '../../../src/hsm/backend';
import { DelegatingBackend } from '../../../src/hsm/delegating-backend';

export class CountingBackend extends DelegatingBackend {
  /** Customer-key operations started (the health key is counted apart). */
  started = 0;
  /** Emits 'start' with the label of each customer-key operation. */
  readonly events = new EventEmitter();
  constructor(
    real: HsmBackend,
    private readonly healthKeyLabel = 'xks-health',
  ) {
    super(real);
  }
  private start(label: string): void {
    if (label === this.healthKeyLabel) return;
    this.started++;
    this.events.emit('start', label);
  }
  override describeKey(label: string): Promise<KeyInfo> {
    this.start(label);
    return super.describeKey(label);
  }
  override encrypt(label: string, p: Buffer, aad: Buffer): Promise<GcmEncryptResult> {
    this.start(label);
    return super.encrypt(label, p, aad);
  }
  override decrypt(label: string, c: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer> {
    this.start(label);
    return super.decrypt(label, c, iv, tag, aad);
  }
}
