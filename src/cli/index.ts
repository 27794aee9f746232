#!/usr/bin/env node
/**
 * xks-proxy: the operator CLI.
 *   serve                         run the proxy
 *   keys create|list|rotate|versions|retire   AES keys in the token and their versions
 *   credentials new|remove|list   SigV4 credentials of a key store (files or the fleet), and the KMS proxy configuration JSON
 */
// First: sizes libuv's thread pool before anything can start it (see the module).
import { threadPoolSizing } from '../runtime/thread-pool-size';
import { parseArgs } from 'node:util';
import { ConfigError, configPathFrom, loadConfig, type LoadedConfig } from '../config/load';
import { readSecret } from '../config/secrets';
import { createKey, listKeys } from '../hsm/key-admin';
import cluster from 'node:cluster';
import { startPrimary } from '../cluster/primary';
import { startWorker } from '../cluster/worker';
import { createAppLogger, type AppLogger } from '../log/logger';
import { StartupError, startProxy, type RunningProxy } from '../main';
import { VERSION } from '../version';
import { CREDENTIALS_USAGE, credentialsCommand } from './credential-commands';
import { CHECK_USAGE, checkCommand } from './check';
import { AUDIT_USAGE, auditCommand } from './audit-commands';
import { IMPORT_USAGE, importConfigCommand } from './import-config';
import { ADMIN_FLAGS, killswitchCommand, operatorCommand, policyCommand } from './control-commands';
import { KEY_VERSION_USAGE, keyVersionCommand, retireCommand } from './key-version-commands';
import { controlCommand, fleetCommand } from './fleet-commands';

const USAGE: Record<string, string> = {
  main: `xks-proxy ${VERSION}: an AWS KMS External Key Store proxy over PKCS#11

Usage: xks-proxy <command> [options]

Commands:
  serve          run the proxy
  keys           create, list and rotate keys in the HSM token
  credentials    create, remove and list SigV4 credentials of a key store (files or the fleet)
  audit          audit signing key, verification of the audit log, reconciliation with CloudTrail
  operator       operator key pairs and admin API tokens
  killswitch     show, engage and lift the kill switch (and the emergency local engage, repair)
  policy         the proxy's allowlists per key store
  fleet          fleet mode (control.store: etcd): members, applied revisions, health
  control        control state migration between the file store and etcd
  check          conformance and latency check of any XKS proxy (ours or another)
  import-config  the AWS sample XKS proxy's settings.toml as this proxy's configuration

Every command takes --config FILE (default: $XKS_CONFIG, else config/softhsm.yaml) and --help.`,
  serve: `Usage: xks-proxy serve [--config FILE]

Runs the proxy: opens the HSM (refuses to start if the module, token, PIN or health key is wrong),
then serves the XKS API. SIGTERM or SIGINT stop it gracefully.`,
  keys: `Usage:
  xks-proxy keys create --label LABEL [--usage encrypt-decrypt|encrypt|decrypt|none] [--bits 256] [--config FILE]
  xks-proxy keys create --type hmac --label LABEL [--config FILE]
  xks-proxy keys list [--json] [--config FILE]

create: generates an AES key inside the token (non-extractable, sensitive) with the given label and
        allowed usage (default encrypt-decrypt, 256 bits). Refuses a label that already exists.
        --type hmac: the control state's MAC key (256-bit generic secret, sign/verify only, never
        leaves the HSM); its label is control.stateAuth.hsmKeyLabel (default xks-control-state).
        Fleet credentials (keyStores[].fleetCredentials) need an AES key too, used for nothing
        else: keys create --label xks-credential-wrap (control.etcd.credentialWrapKeyLabel).
list:   every secret key in the token with the metadata the proxy reports (keySpec, keyUsage), and
        the key stores and externalKeyIds that use it.

${KEY_VERSION_USAGE}`,
  audit: AUDIT_USAGE,
  'import-config': IMPORT_USAGE,
  check: CHECK_USAGE,
  credentials: CREDENTIALS_USAGE,
};

type Flags = Record<string, string | boolean | undefined>;

function parse(argv: string[], options: Record<string, { type: 'string' | 'boolean' }>): { flags: Flags; positionals: string[] } {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...options, config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  return { flags: values as Flags, positionals };
}

function load(flags: Flags): LoadedConfig {
  return loadConfig(configPathFrom(flags.config as string | undefined));
}

function hsmPin(loaded: LoadedConfig): string {
  return readSecret(loaded.config.hsm.pin);
}

async function serve(argv: string[]): Promise<number> {
  const { flags } = parse(argv, {});
  if (flags.help) return help('serve');
  const loaded = load(flags);
  const log = createAppLogger(loaded.config.log.level);
  if (threadPoolSizing.source === 'configuration' && cluster.isPrimary) log.info('libuv thread pool sized for the HSM calls (hsm.callMode async: hsm.pool.size + 4)', { UV_THREADPOOL_SIZE: threadPoolSizing.size });
  // server.workers > 1: this process is the cluster primary, or one of its workers (src/cluster/).
  const clustered = loaded.config.server.workers > 1;
  // Signal handlers first: a SIGTERM that lands while the proxy starts (it logs "listening" before
  // this function resumes) must still stop it gracefully, with its closing audit checkpoint.
  let stopRequested: string | undefined;
  let stop: ((sig: string) => void) | undefined;
  const onStopSignal = (sig: string) => (stop ? stop(sig) : (stopRequested ??= sig));
  process.once('SIGTERM', () => onStopSignal('SIGTERM'));
  process.once('SIGINT', () => onStopSignal('SIGINT'));
  let running: { close(): Promise<void>; reload(): void } | undefined;
  // SIGHUP: re-read the config file; an invalid one is refused and the running config stays.
  process.on('SIGHUP', () => (running ? running.reload() : log.warn('SIGHUP while starting: ignored, send it again once the proxy listens')));
  const started: { close(): Promise<void>; reload(): void } = !clustered
    ? withReloadReport(await startProxy(loaded, { log }), log)
    : cluster.isPrimary
      ? await startPrimary(loaded, log, process.argv.slice(2))
      : withReloadReport(await startWorker(loaded, Number(process.env.XKS_WORKER_INDEX ?? '0'), log), log);
  running = started;
  await new Promise<void>((resolve) => {
    stop = (sig: string) => {
      // A JSON line like every other log line, so that log shippers parse it.
      if (!clustered || cluster.isPrimary) log.info('shutting down', { signal: sig });
      void started.close().then(resolve);
    };
    if (stopRequested) stop(stopRequested);
  });
  // A worker's IPC channel to the primary would keep it alive after its proxy closed.
  if (clustered && cluster.isWorker) process.disconnect?.();
  return 0;
}

function withReloadReport(proxy: RunningProxy, log: AppLogger): { close(): Promise<void>; reload(): void } {
  return {
    close: () => proxy.close(),
    // The proxy logs what a reload applied; a refused one is logged here with every problem.
    reload: () => void proxy.reload().catch((e: unknown) => log.error('configuration NOT reloaded, the running one stays', { problems: (e as Error).message })),
  };
}

async function keys(argv: string[]): Promise<number> {
  const { flags, positionals } = parse(argv, { label: { type: 'string' }, type: { type: 'string' }, usage: { type: 'string' }, bits: { type: 'string' }, json: { type: 'boolean' }, 'key-store': { type: 'string' }, 'key-id': { type: 'string' }, version: { type: 'string' }, reason: { type: 'string' }, 'force-recent-use': { type: 'boolean' }, ...ADMIN_FLAGS });
  const sub = positionals[0];
  if (flags.help || !sub) return help('keys', !flags.help);
  // Through the admin API: no HSM PIN needed here (the proxy destroys the version).
  if (sub === 'retire') return retireCommand(flags);
  const loaded = load(flags);
  if (sub === 'rotate' || sub === 'versions' || sub === 'retire') return keyVersionCommand(sub, loaded, hsmPin(loaded), flags, formatTable);
  if (sub === 'create') {
    const label = flags.label as string | undefined;
    if (!label) return usageError('keys', '--label is required');
    const type = (flags.type as string | undefined) ?? 'aes';
    if (type !== 'aes' && type !== 'hmac') return usageError('keys', `unknown --type ${type} (aes or hmac)`);
    if (type === 'hmac') {
      if (flags.usage !== undefined || flags.bits !== undefined) return usageError('keys', '--usage and --bits do not apply to --type hmac');
      await createKey(loaded.config.hsm, hsmPin(loaded), { label, type, usage: 'none' });
      process.stdout.write(`created HMAC-SHA256 key "${label}" (sign/verify, not extractable) in token "${loaded.config.hsm.tokenLabel}"\n`);
      return 0;
    }
    const usage = (flags.usage as string | undefined) ?? 'encrypt-decrypt';
    if (!['encrypt-decrypt', 'encrypt', 'decrypt', 'none'].includes(usage)) return usageError('keys', `unknown --usage ${usage}`);
    const bits = Number(flags.bits ?? 256);
    if (bits !== 128 && bits !== 192 && bits !== 256) return usageError('keys', '--bits must be 128, 192 or 256');
    await createKey(loaded.config.hsm, hsmPin(loaded), { label, usage: usage as 'encrypt-decrypt', bits });
    process.stdout.write(`created AES-${bits} key "${label}" (usage ${usage}) in token "${loaded.config.hsm.tokenLabel}"\n`);
    return 0;
  }
  if (sub === 'list') {
    const found = await listKeys(loaded.config.hsm, hsmPin(loaded));
    const rows = found.map((k) => ({
      label: k.label,
      keySpec: k.keySpec,
      keyUsage: k.keyUsage,
      usedBy: loaded.config.keyStores.flatMap((ks) => ks.keys.filter((e) => (e.label ?? e.externalKeyId) === k.label).map((e) => ({ keyStore: ks.name, externalKeyId: e.externalKeyId, keyStatus: e.enabled ? 'ENABLED' : 'DISABLED' }))),
    }));
    if (flags.json) process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    else {
      const table = [['LABEL', 'KEY SPEC', 'KEY USAGE', 'USED BY (key store/externalKeyId status)'], ...rows.map((r) => [r.label, r.keySpec, r.keyUsage.join(',') || '-', r.usedBy.map((u) => `${u.keyStore}/${u.externalKeyId} ${u.keyStatus}`).join('; ') || '(not in any key store)'])];
      process.stdout.write(formatTable(table));
    }
    return 0;
  }
  return usageError('keys', `unknown subcommand ${sub}`);
}

async function credentials(argv: string[]): Promise<number> {
  const { flags, positionals } = parse(argv, { 'key-store': { type: 'string' }, 'access-key-id': { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' } });
  const sub = positionals[0];
  if (flags.help || !sub) return help('credentials', !flags.help);
  return credentialsCommand(sub, load(flags), flags, formatTable);
}

/** Rows as columns padded to their widest cell, the first row a header (the last column unpadded). */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

function help(topic: string, asError = false): number {
  (asError ? process.stderr : process.stdout).write(USAGE[topic] + '\n');
  return asError ? 2 : 0;
}

function usageError(topic: string, msg: string): number {
  process.stderr.write(`error: ${msg}\n\n${USAGE[topic]}\n`);
  return 2;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const commands: Record<string, (a: string[]) => Promise<number>> = { serve, keys, credentials, audit: auditCommand, operator: operatorCommand, killswitch: killswitchCommand, policy: policyCommand, check: checkCommand, 'import-config': importConfigCommand, fleet: (a) => fleetCommand(a), control: (a) => controlCommand(a) };
  if (cmd === '--version' || cmd === 'version') {
    process.stdout.write(VERSION + '\n');
    return 0;
  }
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') return help('main', !cmd);
  const run = commands[cmd];
  if (!run) return usageError('main', `unknown command ${cmd}`);
  try {
    return await run(rest);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(e.message + '\n');
      return 2;
    }
    if (e instanceof StartupError || e instanceof Error) {
      process.stderr.write(`error: ${e.message}\n`);
      return (e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 2 : 1;
    }
    process.stderr.write(`error: ${String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // A cluster worker that failed to start is kept alive by its IPC channel: the primary would
    // wait for it forever instead of reporting the failure and exiting. (stderr is synchronous.)
    if (cluster.isWorker && code !== 0) process.exit(code);
  });
}
