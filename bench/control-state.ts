/**
 * What authenticating the control state inside the HSM costs: the median time of a state change
 * (read and verify, MAC, file writes with fsync, the HSM's generation record) and of a verified
 * read (the generation record, then C_Verify), on a fresh SoftHSM2 token. State changes are rare
 * (operator actions); reads run on every change the watcher sees.
 *
 *   npm run build && node dist/bench/control-state.js [--rounds 30]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { applyEngage } from '../src/control/state-model';
import { StateStore } from '../src/control/state-store';
import { openStateHsm } from '../test/helpers/state-hsm';

async function median(rounds: number, f: () => Promise<unknown>): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = process.hrtime.bigint();
    await f();
    ms.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  ms.sort((a, b) => a - b);
  return Math.round(ms[Math.floor(rounds / 2)]! * 100) / 100;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '30' } } });
  const rounds = Number(values.rounds);
  const hsm = await openStateHsm();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-bench-state-'));
  try {
    const store = new StateStore(dir, hsm.newAuth());
    let i = 0;
    const write = await median(rounds, () => store.mutate((b) => ({ body: applyEngage(b, `keystore:ks${i++ % 20}`, { operator: 'bench', via: 'local-cli' }, 'bench', Date.now()), result: undefined })));
    const read = await median(rounds, () => store.read());
    process.stdout.write(`control state change (engage): median ${write} ms; verified read: median ${read} ms (${rounds} rounds, load average ${os.loadavg()[0]!.toFixed(1)})\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    await hsm.close();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
