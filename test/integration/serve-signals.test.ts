/**
 * `xks-proxy serve` and signals during start-up: a SIGTERM that arrives while the proxy is still
 * starting must stop it gracefully (exit 0, "shutting down" logged, the audit log closed with its
 * checkpoint), not kill it with Node's default handler.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { main as cli } from '../../src/cli/index';
import { captureOutput } from '../helpers/capture-output';
import { DEFAULT_CLI, serveFixture, type ServeFixture } from '../helpers/serve-process';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

describe('serve: a stop signal during start-up', function () {
  let token: TestToken;
  let fx: ServeFixture;
  before(async () => {
    token = createTestToken();
    fx = await serveFixture(token, path.join(token.dir, 'serve'));
  });
  after(() => token?.cleanup());

  it('SIGTERM at the first log line of start-up: exit 0, shutdown logged, the audit log verifies', async () => {
    const child = spawn(process.execPath, [DEFAULT_CLI, 'serve', '--config', fx.configFile], { env: fx.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let signalled = false;
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      // The first line comes from inside start-up, before "xks proxy listening".
      if (!signalled) {
        signalled = true;
        child.kill('SIGTERM');
      }
    });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
    expect({ code, signal }, stderr).to.deep.equal({ code: 0, signal: null });
    expect(stderr).to.match(/"message":"shutting down"/);
    const verify = await captureOutput(() => cli(['audit', 'verify', '--public-key', fx.publicKeyFile, fx.auditDir]));
    expect(verify.code, verify.out).to.equal(0);
  });
});
