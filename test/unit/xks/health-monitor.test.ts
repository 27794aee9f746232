/**
 * HealthMonitor follows the backend's availability notices (src/hsm/backend.ts
 * onAvailabilityChange) instead of waiting for its interval. The backend here is a scripted stand
 * in, so that a change can land while a check is in flight; the real thing, a SoftHSM2 token
 * moved away and back, is test/integration/hsm/self-healing.test.ts.
 */
import { expect } from 'chai';
import type { GcmEncryptResult, HsmBackend } from '../../../src/hsm/backend';
import { XksError } from '../../../src/errors/xks-error';
import { createSilentLogger } from '../../../src/log/logger';
import { HealthMonitor } from '../../../src/xks/health-monitor';

/** Encrypts by echoing; `up` decides success; `gate` can hold an encrypt until opened. */
class ScriptedBackend implements HsmBackend {
  up = true;
  encrypts = 0;
  private listeners: ((a: boolean) => void)[] = [];
  private gate: Promise<void> | undefined;
  private openGate: (() => void) | undefined;
  private onHeld: (() => void) | undefined;

  hold(): Promise<void> {
    this.gate = new Promise((r) => (this.openGate = r));
    return new Promise((r) => (this.onHeld = r));
  }
  release(): void {
    this.gate = undefined;
    this.openGate?.();
  }
  change(up: boolean): void {
    this.up = up;
    for (const l of this.listeners) l(up);
  }
  onAvailabilityChange(l: (a: boolean) => void): void {
    this.listeners.push(l);
  }
  async encrypt(_label: string, plaintext: Buffer): Promise<GcmEncryptResult> {
    this.encrypts++;
    const up = this.up; // what the HSM was like when the call reached it
    if (this.gate) {
      this.onHeld?.();
      await this.gate;
    }
    if (!up) throw new XksError('InternalException', undefined, 'scripted: HSM gone');
    return { ciphertext: Buffer.from(plaintext), iv: Buffer.alloc(12, 1), tag: Buffer.alloc(16, 2) };
  }
  // The health check never authenticates control state.
  hmacSign(): Promise<Buffer> {
    throw new Error('not scripted');
  }
  hmacVerify(): Promise<boolean> {
    throw new Error('not scripted');
  }
  readDataObjects(): Promise<Buffer[]> {
    throw new Error('not scripted');
  }
  writeDataObject(): Promise<void> {
    throw new Error('not scripted');
  }
  listKeyVersions(): Promise<never[]> {
    throw new Error('not scripted');
  }
  createKeyVersion(): Promise<number> {
    throw new Error('not scripted');
  }
  destroyKeyVersion(): Promise<void> {
    throw new Error('not scripted');
  }
  async decrypt(_l: string, ciphertext: Buffer): Promise<Buffer> {
    if (!this.up) throw new XksError('InternalException', undefined, 'scripted: HSM gone');
    return Buffer.from(ciphertext);
  }
  async describeKey(): Promise<never> {
    throw new Error('not used');
  }
  tokenInfo() {
    return { manufacturer: 'm', model: 'm', serialNumber: 's', label: 'l' };
  }
  poolStats() {
    return { size: 1, inUse: 0, waiters: 0 };
  }
  async close(): Promise<void> {}
}

/** Resolves once the monitor's cached status is `status` (polled on the microtask queue, bounded). */
async function statusBecomes(m: HealthMonitor, status: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (m.cached()?.status === status) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`status never became ${status}`);
}

describe('HealthMonitor and the backend availability notices', () => {
  const opts = { healthKeyLabel: 'h', intervalMs: 50000, degradedAboveMs: 250 };

  it('checks at once when the backend says the HSM went away and when it is back', async () => {
    const b = new ScriptedBackend();
    const m = new HealthMonitor(b, opts, createSilentLogger());
    expect((await m.check()).status).to.equal('ACTIVE');
    b.change(false);
    await statusBecomes(m, 'UNAVAILABLE');
    b.change(true);
    await statusBecomes(m, 'ACTIVE');
  });

  it('a change during a running check is followed by another check, not lost in the old one', async () => {
    const b = new ScriptedBackend();
    const m = new HealthMonitor(b, opts, createSilentLogger());
    b.up = false;
    const held = b.hold();
    const first = m.check(); // reaches the "HSM" while it is down, and is held there
    await held;
    b.change(true); // back while that check is still running
    b.release();
    expect((await first).status).to.equal('UNAVAILABLE', 'the check that started before the change');
    await statusBecomes(m, 'ACTIVE');
    expect(b.encrypts).to.equal(2);
  });
});
