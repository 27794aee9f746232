/**
 * Opening the configured PKCS#11 module for the composition roots (main.ts, the cluster primary):
 * the PIN from its secret source, then the backend; every failure becomes a StartupError an
 * operator can act on.
 */
import { readSecret } from '../config/secrets';
import type { Config } from '../config/schema';
import { StartupError } from '../errors/startup-error';
import type { AppLogger } from '../log/logger';
import type { HsmBackend } from './backend';
import { openPkcs11Backend } from './pkcs11-backend';

/** Open the configured PKCS#11 module; every failure becomes a StartupError an operator can act on. */
export async function openConfiguredHsm(cfg: Config['hsm'], env: NodeJS.ProcessEnv, log: AppLogger): Promise<HsmBackend> {
  let pin: string;
  try {
    pin = readSecret(cfg.pin, env);
  } catch (e) {
    throw new StartupError(`HSM PIN: ${(e as Error).message}`);
  }
  if (cfg.callMode === 'async') {
    // libuv reads UV_THREADPOOL_SIZE from this process's environment when its pool starts: it
    // cannot come from the configuration (nor from a test's injected env).
    const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    if (threads < cfg.pool.size) {
      log.warn('hsm.callMode async: at most UV_THREADPOOL_SIZE HSM calls run at once; set it to at least hsm.pool.size in the environment', { UV_THREADPOOL_SIZE: threads, poolSize: cfg.pool.size });
    }
  }
  try {
    return await openPkcs11Backend(cfg, pin, log);
  } catch (e) {
    throw new StartupError(`HSM: ${(e as Error).message}`);
  }
}

