/**
 * `serve` with several workers (server.workers: 'auto' by default on more than one core) must fail
 * as a single process does when the HSM is not right: every worker reports the error and exits,
 * and so does the primary, with a non-zero code. (A worker that failed to start used to be kept
 * alive by its IPC channel, and the primary waited for it forever.)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeTlsCert } from '../helpers/proxy-harness';
import { createTestToken, type TestToken } from '../helpers/softhsm-token';

const CLI = path.resolve(__dirname, '../../src/cli/index.js');

describe('serve with workers, when the HSM is not right', function () {
  this.timeout(60_000);
  let token: TestToken;
  before(() => {
    token = createTestToken(); // no health key in it: the start-up deep health check fails
  });
  after(() => token.cleanup());

  it('exits with an error (every worker and the primary), naming the cause', async () => {
    const { certFile, keyFile } = makeTlsCert(token.dir);
    const configFile = path.join(token.dir, 'workers.yaml');
    fs.mkdirSync(path.join(token.dir, 'creds'));
    fs.writeFileSync(
      configFile,
      [
        `server: { host: 127.0.0.1, port: 0, workers: 2, tls: { certFile: ${JSON.stringify(certFile)}, keyFile: ${JSON.stringify(keyFile)} } }`,
        'hsm:',
        `  module: ${token.module}`,
        `  moduleEnv: { SOFTHSM2_CONF: ${JSON.stringify(token.confPath)} }`,
        `  tokenLabel: ${token.tokenLabel}`,
        `  pin: { file: ${JSON.stringify(token.pinFile)} }`,
        'keyStores: [{ name: w, pathPrefix: /w, credentialsDir: ./creds, keys: [{ externalKeyId: k }] }]',
      ].join('\n'),
    );
    const child = spawn(process.execPath, [CLI, 'serve', '--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code, stderr).to.equal(1);
    expect(stderr).to.match(/error: worker \d exited with 1 while starting/);
    expect(stderr).to.include('deep health check');
  });
});
