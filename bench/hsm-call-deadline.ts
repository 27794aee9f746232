/**
 * Fault script (issue 9, item 3): how long a request waits for an HSM call that does not come
 * back. A Pkcs11Backend in hsm.callMode 'async' on a fresh SoftHSM2 token, its module wrapped by
 * the test fault wrapper (test/helpers/faulty-module.ts) so that each C_EncryptAsync result is held
 * for --hold-ms; prints what the encrypt answered and after how long, --n times. Asserts nothing.
 *
 *   npm run build && node dist/bench/hsm-call-deadline.js [--hold-ms 2000] [--n 5]
 */
import { parseArgs } from 'node:util';
import { HsmConfig } from '../src/config/schema';
import { createKey } from '../src/hsm/key-admin';
import { openPkcs11Backend } from '../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../src/log/logger';
import { FaultyModule } from '../test/helpers/faulty-module';
import { createTestToken } from '../test/helpers/softhsm-token';
import { wrappedModule } from '../test/helpers/wrapped-module';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { 'hold-ms': { type: 'string', default: '2000' }, n: { type: 'string', default: '5' } } });
  const holdMs = Number(values['hold-ms']);
  const tk = createTestToken();
  await createKey(tk.hsmConfig, tk.pin, { label: 'k', usage: 'encrypt-decrypt' });
  const net = new FaultyModule();
  // Parsed like a config file without hsm.callTimeoutMs: the default deadline applies.
  const cfg = HsmConfig.parse({ module: tk.module, moduleEnv: tk.hsmConfig.moduleEnv, tokenLabel: tk.tokenLabel, pin: { file: tk.pinFile }, callMode: 'async' });
  const b = await openPkcs11Backend(cfg, tk.pin, createSilentLogger(), wrappedModule(net.wrap));
  const rows: { answer: string; ms: number }[] = [];
  for (let i = 0; i < Number(values.n); i++) {
    net.holdAsync();
    const t0 = process.hrtime.bigint();
    const release = net.whenHeld(1).then(() => new Promise<void>((r) => setTimeout(r, holdMs))).then(() => net.releaseHeld());
    let answer = 'OK';
    try {
      await b.encrypt('k', Buffer.from('held'), Buffer.from('aad'));
    } catch (e) {
      answer = (e as { errorName?: string }).errorName ?? String(e);
    }
    rows.push({ answer, ms: Math.round(Number(process.hrtime.bigint() - t0) / 1e5) / 10 });
    net.holdAsync(false);
    await release;
    await b.encrypt('k', Buffer.from('settle'), Buffer.from('aad')); // the held session is back
  }
  await b.close();
  tk.cleanup();
  console.log(JSON.stringify({ holdMs, callTimeoutMs: (cfg as { callTimeoutMs?: number }).callTimeoutMs ?? 'none', calls: rows }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
