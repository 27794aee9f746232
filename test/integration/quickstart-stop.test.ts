/**
 * `scripts/quickstart.sh stop` against a proxy that exits but is never reaped: in a container whose
 * pid 1 is a shell or `sleep`, the background proxy becomes a zombie once it exits, and `kill -0`
 * still succeeds on a zombie. The script must see it as stopped, not wait and send SIGKILL.
 */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const REPO = path.resolve(__dirname, '..', '..', '..');

function processState(pid: number): string | undefined {
  try {
    return /^State:\s+(\S)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  } catch {
    return undefined; // gone
  }
}

describe('scripts/quickstart.sh stop', function () {
  this.timeout(60_000);
  let dir: string;
  let parent: ChildProcess | undefined;

  beforeEach(() => {
    // A copy of the script in a folder of its own: it works on <its folder>/../data only.
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-quickstart-'));
    fs.mkdirSync(path.join(dir, 'scripts'));
    fs.mkdirSync(path.join(dir, 'data'));
    fs.copyFileSync(path.join(REPO, 'scripts', 'quickstart.sh'), path.join(dir, 'scripts', 'quickstart.sh'));
  });

  afterEach(() => {
    parent?.kill('SIGKILL'); // its zombie child goes to init, which reaps it
    parent = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('takes a proxy that exited but was not reaped (a zombie) as stopped, without SIGKILL', async () => {
    const pidFile = path.join(dir, 'data', 'proxy.pid');
    // The stand-in proxy: `sleep` named like the CLI's serve command (the script checks the command
    // line). Its parent then becomes `sleep` too, which never waits for children: once the stand-in
    // gets SIGTERM and exits, it stays a zombie.
    parent = spawn(
      'bash',
      ['-c', `(exec -a "node ${REPO}/dist/src/cli/index.js serve --config x" sleep 600) & echo $! > "$1"; exec sleep 600`, 'bash', pidFile],
      { stdio: 'ignore' },
    );
    let pid = 0;
    for (let i = 0; i < 200 && !pid; i++) {
      const text = fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8').trim() : '';
      if (/^\d+$/.test(text) && fs.readFileSync(`/proc/${text}/cmdline`, 'utf8').includes('index.js serve')) pid = Number(text);
      else await new Promise((r) => setTimeout(r, 50)); // bounded poll for the stand-in to start
    }
    expect(pid, 'the stand-in proxy started').to.be.greaterThan(0);

    const r = spawnSync('bash', [path.join(dir, 'scripts', 'quickstart.sh'), 'stop'], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).to.equal(0);
    expect(r.stdout).to.include(`stopping the proxy (pid ${pid})`);
    expect(r.stdout).to.include('stopped');
    expect(r.stdout + r.stderr).not.to.include('SIGKILL');
    expect(fs.existsSync(pidFile)).to.equal(false);
    // The stand-in really exited (and is a zombie, the case under test), it was not left running.
    expect(processState(pid)).to.equal('Z');
  });
});
