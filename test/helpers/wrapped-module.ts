/**
 * A backend whose module is the real one behind a wrapper (fault injection, vendor emulation):
 * openPkcs11Backend(cfg, pin, log, wrappedModule(wrap)). The wrapper lives in this backend's
 * ModuleRef only: the per-process module cache that other backends and key-admin share keeps the
 * real object, and reference counting and release go to the shared ref.
 */
import type * as pkcs11js from 'pkcs11js';
import type { Pkcs11OpenOptions } from '../../src/hsm/pkcs11-backend';
import { acquireModule } from '../../src/hsm/pkcs11-module';

export function wrappedModule(wrap: (real: pkcs11js.PKCS11) => pkcs11js.PKCS11): Pkcs11OpenOptions {
  return {
    module: (cfg) => {
      const shared = acquireModule(cfg);
      return { pkcs11: wrap(shared.pkcs11), path: shared.path, soleUser: () => shared.soleUser(), release: () => shared.release() };
    },
  };
}
