/**
 * scripts/node-headers.sh picks the folder node-gyp compiles pkcs11js against. Headers of another
 * Node version must never be taken (the addon would not load), and a folder that holds the running
 * version's headers must be used as it is, with nothing fetched. The fetch from the npm registry
 * itself is exercised by scripts/fresh-machine-trial.sh on a machine without headers.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const SCRIPT = path.resolve(__dirname, '..', '..', '..', 'scripts', 'node-headers.sh');

/** A folder laid out like Node's headers (include/node/common.gypi, node_version.h) for `version`. */
function fakeHeaders(dir: string, version: string): string {
  const [major, minor, patch] = version.split('.');
  fs.mkdirSync(path.join(dir, 'include', 'node'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'include', 'node', 'common.gypi'), '{}\n');
  fs.writeFileSync(
    path.join(dir, 'include', 'node', 'node_version.h'),
    `#define NODE_MAJOR_VERSION ${major}\n#define NODE_MINOR_VERSION ${minor}\n#define NODE_PATCH_VERSION ${patch}\n`,
  );
  return dir;
}

function run(dir: string, env: NodeJS.ProcessEnv) {
  // No registry to reach: a fetch attempt fails instead of downloading.
  return spawnSync('bash', [SCRIPT], { encoding: 'utf8', env: { ...process.env, HOME: dir, npm_config_registry: 'http://127.0.0.1:9/', npm_config_fetch_retries: '0', ...env } });
}

describe('scripts/node-headers.sh', function () {
  this.timeout(60_000);
  let dir: string;
  const running = process.version.slice(1);

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-node-headers-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("uses npm's nodedir when it holds the running version's headers, fetching nothing", () => {
    const nodedir = fakeHeaders(path.join(dir, 'nodedir'), running);
    const r = run(dir, { npm_config_nodedir: nodedir, XKS_NODE_HEADERS_CACHE: path.join(dir, 'cache') });
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal(nodedir);
    expect(r.stderr).not.to.include('fetching');
    expect(fs.existsSync(path.join(dir, 'cache'))).to.equal(false);
  });

  it("passes over npm's nodedir when its headers are another Node version's, and says so", () => {
    const [major, minor, patch] = running.split('.').map(Number);
    const other = fakeHeaders(path.join(dir, 'other'), `${major}.${minor! + 1}.${patch}`);
    // A cache already holding the running version's headers, so that no fetch is needed.
    const cached = fakeHeaders(path.join(dir, 'cache', `v${running}-${process.platform}-${process.arch}`), running);
    const r = run(dir, { npm_config_nodedir: other, XKS_NODE_HEADERS_CACHE: path.join(dir, 'cache') });
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout.trim()).not.to.equal(other);
    // The Node installation's own headers come first when it has them; the cache otherwise.
    const prefix = path.dirname(path.dirname(process.execPath));
    const prefixHasHeaders = fs.existsSync(path.join(prefix, 'include', 'node', 'common.gypi'));
    if (!prefixHasHeaders) expect(r.stdout.trim()).to.equal(cached);
    expect(r.stderr).to.include(`npm's nodedir (${other}) has no C headers for Node v${running}`);
  });
});
