/**
 * kill -9 at any moment: a process changing the control state is killed with SIGKILL at a random
 * point of its write loop; the state file must then verify and hold the last acknowledged
 * generation or the one after it (never a torn file), and the next writer must get the lock. The
 * state is authenticated in a real SoftHSM2 token (MAC and generation record), which both processes
 * use: a kill between the file and the token's record must not read as tampering.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { applyEngage } from '../../../src/control/state-model';
import type { StateAuthenticator } from '../../../src/control/state-auth';
import { StateStore } from '../../../src/control/state-store';
import { STATE_KEY_LABEL, openStateHsm, type StateHsm } from '../../helpers/state-hsm';

const WRITER = path.join(__dirname, 'fixtures', 'state-writer.js');

describe('control state durability under kill -9', () => {
  let dir: string;
  let shsm: StateHsm;
  let auth: StateAuthenticator;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-kill9-'));
    shsm = await openStateHsm();
    auth = shsm.newAuth();
  });
  after(async () => {
    await shsm.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (let round = 1; round <= 2; round++) {
    it(`round ${round}: the state is the old or the new one, never torn`, async () => {
      const childOpts = { hsm: shsm.token.hsmConfig, anchorLabel: auth.anchorLabel, keyLabel: STATE_KEY_LABEL };
      const child = spawn(process.execPath, [WRITER, dir, JSON.stringify(childOpts)], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = once(child, 'exit');
      const drained = once(child.stdout!, 'end');
      const target = 1 + Math.floor(Math.random() * 10);
      let acknowledged = 0;
      let seen = 0;
      let buf = '';
      await new Promise<void>((resolve) => {
        child.stdout!.on('data', (c: Buffer) => {
          buf += c.toString();
          const lines = buf.split('\n');
          buf = lines.pop()!;
          for (const l of lines) {
            acknowledged = Number(l);
            if (++seen === target && !child.killed) {
              // Mid-loop: the child is already inside its next write (or about to be).
              child.kill('SIGKILL');
              resolve();
            }
          }
        });
      });
      const [, signal] = await exited;
      // Every generation the child acknowledged before it died (lines still in the pipe included).
      await drained;
      if (buf) acknowledged = Number(buf);
      expect(signal).to.equal('SIGKILL');
      const r = await new StateStore(dir, auth).read();
      expect(r.ok, r.ok ? '' : (r as { reason?: string }).reason).to.equal(true);
      const gen = r.ok ? r.state.generation : -1;
      expect(gen).to.be.at.least(acknowledged);
      expect(gen).to.be.at.most(acknowledged + 1);
      // The lock the killed process may have held is broken; the next change goes through.
      const next = await new StateStore(dir, auth, 3000).mutate((b) => ({ body: applyEngage(b, 'proxy', { operator: 'parent', via: 'local-cli' }, 'after kill', Date.now()), result: undefined }));
      expect(next.state.generation).to.equal(gen + 1);
    });
  }
});
