/**
 * Real SoftHSM2 tokens for tests.
 *
 * RULES - read before using this from a new test file. All test files run in ONE mocha process,
 * and in one process:
 *  1. libsofthsm2.so is loaded once (pkcs11js dlopen), and SoftHSM2 reads SOFTHSM2_CONF only at
 *     C_Initialize. So every token this helper makes lives in ONE shared token directory described
 *     by ONE softhsm2.conf: `confPath` is the same for every call, and `hsmConfig.moduleEnv`
 *     always points at it. Never point a test at another softhsm2.conf in the same process.
 *  2. SoftHSM2 scans its token directory only at C_Initialize. A token created while some backend
 *     in this process holds the module initialised stays invisible until the module is finalised,
 *     which happens when the last user lets go (Pkcs11Backend.close(), the end of a key-admin
 *     call). Hence: create your tokens in before() (or at load time) BEFORE opening a backend, and
 *     close every backend you open in after(). Then each file can have its own token(s).
 *  3. Token labels are unique per process: omit `label` to get a random one. Passing a label that
 *     was already used in this process throws, even after cleanup() (two tokens with one label
 *     would be ambiguous, and a live module may still list a deleted token).
 *  4. PKCS#11 login state is per process and token: a backend opened on a token some other open
 *     backend is logged into skips C_Login. Use a token of your own for wrong-PIN tests.
 *  5. cleanup() deletes the token and its folder; the shared folder is removed at process exit.
 *
 * Synchronous on purpose (execFileSync): it runs in before() hooks and at load time.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HsmConfig } from '../../src/config/schema';

export interface TestToken {
  /** A folder of this token's own (holds pinFile; tests may put other files here). */
  dir: string;
  /** The process-wide softhsm2.conf (see rule 1). */
  confPath: string;
  /** Path of libsofthsm2.so. */
  module: string;
  tokenLabel: string;
  /** The user PIN (random). */
  pin: string;
  /** A file holding the user PIN, mode 0600, no trailing newline. */
  pinFile: string;
  /** Ready to use: module, moduleEnv.SOFTHSM2_CONF (absolute), tokenLabel, pin: { file: pinFile }. */
  hsmConfig: HsmConfig;
  /**
   * The token's own folder inside the shared token directory (SoftHSM2's file store: one folder
   * per token, named by a UUID). Moving it away and back is the "token files gone" fault.
   */
  filesDir(): string;
  /** Deletes the token and `dir`. Idempotent. */
  cleanup(): void;
}

const MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
  '/opt/homebrew/lib/softhsm/libsofthsm2.so',
];

/** SOFTHSM2_MODULE overrides the search (e.g. a distribution with another layout). */
export function softhsmModulePath(): string {
  const fromEnv = process.env.SOFTHSM2_MODULE;
  if (fromEnv) return fromEnv;
  const found = MODULE_CANDIDATES.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`libsofthsm2.so not found (looked in ${MODULE_CANDIDATES.join(', ')}); set SOFTHSM2_MODULE`);
  return found;
}

interface SharedStore {
  base: string;
  confPath: string;
  tokenDir: string;
}

let shared: SharedStore | undefined;
const labelsUsed = new Set<string>();

function sharedStore(): SharedStore {
  if (shared) return shared;
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-softhsm-'));
  const tokenDir = path.join(base, 'tokens');
  fs.mkdirSync(tokenDir, { mode: 0o700 });
  const confPath = path.join(base, 'softhsm2.conf');
  fs.writeFileSync(confPath, [`directories.tokendir = ${tokenDir}`, 'objectstore.backend = file', 'log.level = ERROR', ''].join('\n'), {
    mode: 0o600,
  });
  process.once('exit', () => fs.rmSync(base, { recursive: true, force: true }));
  shared = { base, confPath, tokenDir };
  return shared;
}

function softhsmUtil(confPath: string, args: string[]): void {
  // SOFTHSM2_CONF for the child only: the test process's env is the backend's business.
  execFileSync('softhsm2-util', args, {
    env: { ...process.env, SOFTHSM2_CONF: confPath },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

export function createTestToken(opts: { label?: string } = {}): TestToken {
  const store = sharedStore();
  const tokenLabel = opts.label ?? `xks-test-${randomBytes(6).toString('hex')}`;
  if (tokenLabel.length === 0 || tokenLabel.length > 32) throw new Error(`token label must be 1-32 characters: "${tokenLabel}"`);
  if (labelsUsed.has(tokenLabel)) throw new Error(`the test token label "${tokenLabel}" was already used in this process`);

  const pin = randomBytes(12).toString('hex');
  const soPin = randomBytes(12).toString('hex');
  const dir = fs.mkdtempSync(path.join(store.base, 'token-'));
  const pinFile = path.join(dir, 'user.pin');
  fs.writeFileSync(pinFile, pin, { mode: 0o600 });

  softhsmUtil(store.confPath, ['--init-token', '--free', '--label', tokenLabel, '--so-pin', soPin, '--pin', pin]);
  labelsUsed.add(tokenLabel);

  const module = softhsmModulePath();
  const hsmConfig = HsmConfig.parse({
    module,
    moduleEnv: { SOFTHSM2_CONF: store.confPath },
    tokenLabel,
    pin: { file: pinFile },
  });

  let cleaned = false;
  return {
    dir,
    confPath: store.confPath,
    module,
    tokenLabel,
    pin,
    pinFile,
    hsmConfig,
    filesDir(): string {
      // token.object holds the label padded with spaces to 32 bytes (CK_TOKEN_INFO.label).
      const needle = Buffer.from(tokenLabel.padEnd(32, ' '));
      const found = fs
        .readdirSync(store.tokenDir)
        .map((d) => path.join(store.tokenDir, d))
        .filter((d) => fs.existsSync(path.join(d, 'token.object')) && fs.readFileSync(path.join(d, 'token.object')).includes(needle));
      if (found.length !== 1) throw new Error(`expected one token folder for "${tokenLabel}", found ${found.length}`);
      return found[0]!;
    },
    cleanup(): void {
      if (cleaned) return;
      cleaned = true;
      try {
        softhsmUtil(store.confPath, ['--delete-token', '--token', tokenLabel]);
      } finally {
        // The label stays reserved: a module initialised in this process may still list the
        // deleted token until it is finalised.
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
