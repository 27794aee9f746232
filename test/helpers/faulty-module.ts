/**
 * TEST ONLY: fault injection around the REAL PKCS#11 module (a JS Proxy around the pkcs11js
 * object, handed to one backend through wrappedModule() (wrapped-module.ts); other users of the module in
 * the process keep the real one). Every call goes to SoftHSM2 unless a fault is switched on:
 *
 * - unplug(code): every C_* call (C_Initialize and C_Finalize included) fails with `code` without
 *   reaching the module, as a network HSM whose link is down or a device that was pulled out;
 *   `only` narrows it to some functions (e.g. the ones that use a session). plugIn() ends it.
 * - tokenSwapped(): what SoftHSM2 does once its token files have gone (measured, see
 *   src/hsm/pkcs11-backend.ts "Recovery"): key handles answer CKR_OBJECT_HANDLE_INVALID, searches
 *   find nothing, C_GetTokenInfo answers CKR_GENERAL_ERROR, and it does not pass by itself:
 *   only C_Finalize + C_Initialize after plugIn() ends it.
 * - holdAsync(): results of C_EncryptAsync / C_DecryptAsync are held until releaseHeld(), a
 *   network round trip that the test controls (for the per-call deadline).
 *
 * `calls` counts the calls per function that reached the wrapper (for "nothing was called").
 */
import * as pkcs11js from 'pkcs11js';

export function ckrError(code: number, method: string): pkcs11js.Pkcs11Error {
  const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === code)?.[0] ?? 'CKR_UNKNOWN';
  return new pkcs11js.Pkcs11Error(`${name}:${code}`, code, method);
}

type Fault = { kind: 'unplugged'; code: number; only: Set<string> | undefined } | { kind: 'token-swapped'; healOnFinalize: boolean };

export class FaultyModule {
  private fault: Fault | undefined;
  private holding = false;
  private readonly held: (() => void)[] = [];
  private heldWaiters: { n: number; resolve: () => void }[] = [];
  readonly calls = new Map<string, number>();

  unplug(code: number, only?: string[]): void {
    this.fault = { kind: 'unplugged', code, only: only ? new Set(only) : undefined };
  }

  tokenSwapped(): void {
    this.fault = { kind: 'token-swapped', healOnFinalize: false };
  }

  /** Ends an unplug at once; a swapped token stays broken until the module is re-initialised. */
  plugIn(): void {
    if (this.fault?.kind === 'token-swapped') this.fault.healOnFinalize = true;
    else this.fault = undefined;
  }

  holdAsync(on = true): void {
    this.holding = on;
  }

  heldCount(): number {
    return this.held.length;
  }

  /** Resolves once at least `n` async results are held. */
  whenHeld(n: number): Promise<void> {
    return new Promise((resolve) => {
      this.heldWaiters.push({ n, resolve });
      this.notifyHeld();
    });
  }

  releaseHeld(): void {
    for (const release of this.held.splice(0)) release();
  }

  count(fn: string): number {
    return this.calls.get(fn) ?? 0;
  }

  wrap = (real: pkcs11js.PKCS11): pkcs11js.PKCS11 =>
    new Proxy(real, {
      get: (target, prop) => {
        const v: unknown = Reflect.get(target, prop, target);
        if (typeof prop !== 'string' || typeof v !== 'function') return v;
        const fn = v as (...a: unknown[]) => unknown;
        if (!prop.startsWith('C_')) return fn.bind(target);
        return (...args: unknown[]) => {
          this.calls.set(prop, (this.calls.get(prop) ?? 0) + 1);
          this.inject(prop);
          if (this.fault?.kind === 'token-swapped' && prop === 'C_FindObjects') {
            fn.apply(target, args); // keep the search state of the real session consistent
            return [];
          }
          const r = fn.apply(target, args);
          if (this.holding && (prop === 'C_EncryptAsync' || prop === 'C_DecryptAsync')) {
            return (r as Promise<Buffer>).then(
              (out) =>
                new Promise<Buffer>((resolve) => {
                  this.held.push(() => resolve(out));
                  this.notifyHeld();
                }),
            );
          }
          return r;
        };
      },
    });

  private inject(fn: string): void {
    const f = this.fault;
    if (!f) return;
    if (f.kind === 'unplugged') {
      if (!f.only || f.only.has(fn)) throw ckrError(f.code, fn);
      return;
    }
    // token swapped
    if (fn === 'C_Finalize' && f.healOnFinalize) {
      this.fault = undefined;
      return;
    }
    if (fn === 'C_GetTokenInfo') throw ckrError(pkcs11js.CKR_GENERAL_ERROR, fn);
    if (fn === 'C_EncryptInit' || fn === 'C_DecryptInit' || fn === 'C_GetAttributeValue') throw ckrError(pkcs11js.CKR_OBJECT_HANDLE_INVALID, fn);
  }

  private notifyHeld(): void {
    this.heldWaiters = this.heldWaiters.filter((w) => (this.held.length >= w.n ? (w.resolve(), false) : true));
  }
}
