/**
 * Sizes libuv's thread pool from the HSM configuration, for `xks-proxy serve`. MUST be the first
 * import of the CLI entry (src/cli/index.ts): libuv reads UV_THREADPOOL_SIZE once, when its pool
 * starts at the first asynchronous fs, dns, crypto or PKCS#11 *Async call, and that value holds
 * for the life of the process. Setting it here, before any other module has run, is enough: no
 * re-exec is needed (test/integration/thread-pool-size.test.ts checks the concurrency reached).
 *
 * In hsm.callMode 'async' each C_Encrypt/C_Decrypt takes a pool thread for its whole network
 * round trip; with libuv's default 4 threads a network HSM at 2 ms could not exceed 2,000 calls per
 * second whatever hsm.pool.size says. A value the operator put in the environment is kept (and
 * warned about at start-up when smaller than hsm.pool.size, src/main.ts). Cluster workers inherit
 * the primary's environment, hence the same size.
 */
import { configPathFrom, loadConfig } from '../config/load';
import { UV_DEFAULT_THREADS, threadPoolSizeFor } from '../hsm/capacity';

export interface ThreadPoolSizing {
  /** 'configuration': set here from hsm.pool.size; 'environment': the operator's value kept. */
  source: 'configuration' | 'environment' | 'unchanged';
  size?: number;
}

export function sizeThreadPool(argv: readonly string[], env: NodeJS.ProcessEnv): ThreadPoolSizing {
  if (argv[0] !== 'serve') return { source: 'unchanged' };
  if (env.UV_THREADPOOL_SIZE !== undefined && env.UV_THREADPOOL_SIZE !== '') return { source: 'environment', size: Number(env.UV_THREADPOOL_SIZE) };
  const i = argv.findIndex((a) => a === '--config' || a.startsWith('--config='));
  const explicit = i < 0 ? undefined : argv[i]!.includes('=') ? argv[i]!.slice('--config='.length) : argv[i + 1];
  let size: number;
  try {
    size = threadPoolSizeFor(loadConfig(configPathFrom(explicit, env), env).config.hsm);
  } catch {
    // An unreadable or invalid configuration is reported by `serve` itself, with every problem.
    return { source: 'unchanged' };
  }
  if (size === UV_DEFAULT_THREADS) return { source: 'unchanged' };
  env.UV_THREADPOOL_SIZE = String(size);
  return { source: 'configuration', size };
}

export const threadPoolSizing = sizeThreadPool(process.argv.slice(2), process.env);
