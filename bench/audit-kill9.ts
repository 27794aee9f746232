/**
 * Audit records lost to `kill -9`: starts `xks-proxy serve` (audit log on) on a fresh SoftHSM2
 * token, sends signed Encrypts from many connections, kills the process with SIGKILL after a
 * number of 200 answers, and counts the answered requests whose kmsRequestId is not in the audit
 * files. Several rounds on the same log (each restart recovers the chain). Prints one line per
 * round and the total.
 *
 *   node dist/bench/audit-kill9.js [--rounds 10] [--concurrency 32] [--kill-after 400]
 *                                  [--cli path/to/dist/src/cli/index.js]   (another build: before/after)
 */
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { auditedRequestIds, DEFAULT_CLI, encryptUntilKilled, serveFixture, startServe } from '../test/helpers/serve-process';
import { createTestToken } from '../test/helpers/softhsm-token';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '10' },
      concurrency: { type: 'string', default: '32' },
      'kill-after': { type: 'string', default: '400' },
      cli: { type: 'string', default: DEFAULT_CLI },
    },
  });
  const token = createTestToken();
  const fx = await serveFixture(token, path.join(token.dir, 'proxy'));
  let answeredTotal = 0;
  let missingTotal = 0;
  try {
    for (let round = 1; round <= Number(values.rounds); round++) {
      const proc = await startServe(fx, path.resolve(values.cli!));
      const { answered, otherStatus } = await encryptUntilKilled(fx, proc, { concurrency: Number(values.concurrency), killAfter: Number(values['kill-after']) });
      const audited = auditedRequestIds(fx.auditDir);
      const missing = answered.filter((id) => !audited.has(id)).length;
      answeredTotal += answered.length;
      missingTotal += missing;
      process.stdout.write(`round ${round}: ${answered.length} answered 200, ${missing} without an audit record${Object.keys(otherStatus).length ? `; other answers ${JSON.stringify(otherStatus)}` : ''}\n`);
    }
    process.stdout.write(`total: ${missingTotal} of ${answeredTotal} answered requests without an audit record (${os.cpus().length} cpus, cli ${values.cli})\n`);
  } finally {
    token.cleanup();
    fs.rmSync(fx.dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
