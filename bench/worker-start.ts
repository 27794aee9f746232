/**
 * How often a proxy with several workers fails to start on one SoftHSM2 token: each start is
 * `xks-proxy serve` with server.workers N on a fresh token, stopped once it listens. The workers
 * log in at the same moment; SoftHSM2 rewrites the token's file at each login, and a worker whose
 * scan ran meanwhile did not see the token ("No token labelled ..."), which failed the start until
 * the token lookup rescanned (src/hsm/pkcs11-token.ts findTokenRescanning).
 *
 *   npm run build && node dist/bench/worker-start.js [--starts 40] [--workers 2]
 */
import { parseArgs } from 'node:util';
import { startTarget } from './lib/setup';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { starts: { type: 'string', default: '40' }, workers: { type: 'string', default: '2' } } });
  const starts = Number(values.starts);
  const workers = Number(values.workers);
  const failures: string[] = [];
  const t0 = Date.now();
  for (let i = 0; i < starts; i++) {
    try {
      const t = await startTarget({ workers });
      await t.stop();
    } catch (e) {
      const why = (e as Error).message.split('\n').find((l) => /No token|error:/.test(l)) ?? (e as Error).message.split('\n')[0]!;
      failures.push(why.slice(0, 200));
      process.stderr.write(`start ${i + 1}: FAILED ${why.slice(0, 200)}\n`);
    }
  }
  console.log(`${starts} starts with server.workers ${workers} on a fresh SoftHSM2 token each: ${failures.length} failed (${((Date.now() - t0) / starts / 1000).toFixed(1)} s per start)`);
  process.exitCode = failures.length === 0 ? 0 : 1;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
