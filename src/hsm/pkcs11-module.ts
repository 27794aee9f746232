/**
 * The loaded PKCS#11 module, shared per process (reference counted), for the backend and the
 * operator commands alike. Part of the PKCS#11 layer: with pkcs11-token.ts and pkcs11-backend.ts
 * the only code in src/ that calls pkcs11js.
 */
import * as path from 'node:path';
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../config/schema';
import { ckrCode, ckrName } from './ckr-table';

/* ------------------------------------------------------------------------------------------------
 * The loaded module, shared per process.
 *
 * A PKCS#11 library is a process-wide singleton whatever we do: dlopen returns the same instance,
 * and C_Initialize/C_Finalize/C_Login state belongs to the process, not to a pkcs11js object. So the
 * module is loaded once per path and reference counted: C_Finalize runs when its last user (a
 * backend, a key-admin command) lets go, and not under another user's feet.
 * ---------------------------------------------------------------------------------------------- */

interface LoadedModule {
  readonly pkcs11: pkcs11js.PKCS11;
  readonly path: string;
  users: number;
}

const loadedModules = new Map<string, LoadedModule>();

export interface ModuleRef {
  readonly pkcs11: pkcs11js.PKCS11;
  readonly path: string;
  /** true if nobody else in this process holds the module. */
  soleUser(): boolean;
  /** Lets go of the module; the last user finalises and unloads it. Idempotent. */
  release(): void;
}

/** C_Initialize, tolerating a module that someone in this process has initialised already. */
export function initializeModule(p: pkcs11js.PKCS11): void {
  try {
    p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (ckrCode(e) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
  }
}

/** Names only: hsm.moduleEnv may carry a vendor's credentials (e.g. a client password). */
export function describeEnv(env: Record<string, string>): string {
  const names = Object.keys(env);
  return names.length === 0 ? '' : ` (hsm.moduleEnv sets ${names.join(', ')})`;
}

/**
 * Loads (once per process) and initialises the PKCS#11 module. cfg.moduleEnv entries are put into
 * process.env first: modules such as SoftHSM2 read them at C_Initialize. Throws a plain Error with
 * an operator message when the module cannot be loaded or initialised.
 */
export function acquireModule(cfg: Pick<HsmConfig, 'module' | 'moduleEnv'>): ModuleRef {
  for (const [k, v] of Object.entries(cfg.moduleEnv)) process.env[k] = v;
  const modPath = path.resolve(cfg.module);
  let entry = loadedModules.get(modPath);
  if (!entry) {
    const p = new pkcs11js.PKCS11();
    try {
      p.load(modPath);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new Error(`Cannot load the PKCS#11 module "${modPath}" (hsm.module): ${why}`);
    }
    entry = { pkcs11: p, path: modPath, users: 0 };
    loadedModules.set(modPath, entry);
  }
  try {
    initializeModule(entry.pkcs11);
  } catch (e) {
    if (entry.users === 0) {
      loadedModules.delete(modPath);
      entry.pkcs11.close();
    }
    const code = ckrCode(e);
    const why = code !== undefined ? ckrName(code) : e instanceof Error ? e.message : String(e);
    throw new Error(
      `The PKCS#11 module "${modPath}" failed to initialise (${why})${describeEnv(cfg.moduleEnv)}. ` +
        'For SoftHSM2, check that SOFTHSM2_CONF names a readable softhsm2.conf whose directories.tokendir exists.',
    );
  }
  entry.users++;
  const held = entry;
  let released = false;
  return {
    pkcs11: held.pkcs11,
    path: held.path,
    soleUser: () => held.users === 1,
    release: () => {
      if (released) return;
      released = true;
      held.users--;
      if (held.users > 0) return;
      loadedModules.delete(held.path);
      try {
        held.pkcs11.C_Finalize();
      } catch {
        // Already finalised (by someone else in this process): nothing left to do.
      }
      held.pkcs11.close();
    },
  };
}

