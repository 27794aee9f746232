/**
 * kill -9 at any moment: a process changing the control state is killed with SIGKILL at a random
 * point of its write loop; the state file must then verify and hold the last acknowledged
 * generation or the one after it (never a torn file), and the next writer must get the lock.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { applyEngage } from '../../../src/control/state-model';
import { StateStore } from '../../../src/control/state-store';

const WRITER = path.join(__dirname, 'fixtures', 'state-writer.js');

describe('control state durability under kill -9', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-kill9-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (let round = 1; round <= 2; round++) {
    it(`round ${round}: the state is the old or the new one, never torn`, async () => {
      const child = spawn(process.execPath, [WRITER, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
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
      const r = new StateStore(dir).read();
      expect(r.ok, r.ok ? '' : (r as { reason?: string }).reason).to.equal(true);
      const gen = r.ok ? r.state.generation : -1;
      expect(gen).to.be.at.least(acknowledged);
      expect(gen).to.be.at.most(acknowledged + 1);
      // The lock the killed process may have held is broken; the next change goes through.
      const next = await new StateStore(dir, 3000).mutate((b) => ({ body: applyEngage(b, 'proxy', { operator: 'parent', via: 'local-cli' }, 'after kill', Date.now()), result: undefined }));
      expect(next.state.generation).to.equal(gen + 1);
    });
  }
});
