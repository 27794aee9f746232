/**
 * Operator CLI for the sovereignty controls:
 *   operator keygen|token        operator key pairs and short-lived admin tokens
 *   killswitch show|engage|approve-lift   through the admin API (a fresh token per call)
 *   killswitch emergency-engage  directly on the appliance's state files, when the admin API is unreachable
 *   killswitch repair            replace an unreadable state file (keeps everything blocked)
 *   killswitch show --local      read the state file directly
 *   policy get|set|delete        allowlists through the admin API; policy validate: offline check
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { configPathFrom, loadConfig, type LoadedConfig } from '../config/load';
import { generateOperatorKey, mintOperatorToken, readPrivateJwk, writeOperatorKey, OPERATOR_ALGS, ROLES, type OperatorAlg, type Role } from '../admin/tokens';
import { validatePolicy } from '../control/policy';
import { directoryOf } from '../control/key-directory';
import { blockCoverage, checkScope, parseScope } from '../control/scope';
import { applyEngage, applyRepair, checkReason, type Actor } from '../control/state-model';
import { hsmStateAuthenticator } from '../control/state-auth';
import { StateStore, type RepairSource } from '../control/state-store';
import type { ControlStore } from '../control/control-store';
import { connectEtcd, normalisePrefix } from '../control/etcd-client';
import { EtcdControlStore } from '../control/etcd-store';
import { readSecret } from '../config/secrets';
import { openPkcs11Backend } from '../hsm/pkcs11-backend';
import { createSilentLogger } from '../log/logger';
import { collectResponse } from '../util/http-response';

export const CONTROL_USAGE: Record<string, string> = {
  operator: `Usage:
  xks-proxy operator keygen --name NAME --out-dir DIR [--alg EdDSA|ES256] [--roles operator[,auditor]] [--jwks FILE]
  xks-proxy operator token --key PRIVATE.jwk.json [--role operator|auditor] [--audience AUD] [--ttl SECONDS] [--config FILE]

keygen: a new operator key pair: DIR/NAME.private.jwk.json (mode 0600, stays with the operator) and
        DIR/NAME.public.jwk.json (kid = NAME, "xks_roles" = --roles, default operator). --jwks adds
        the public key to the appliance's JWKS file (control.admin.jwksFile), created if absent.
token:  prints a JWT for the admin API: sub = kid = the operator, aud = --audience (default:
        control.admin.audience of the config), xks_role = --role (default operator), single-use
        jti, lifetime --ttl seconds (default 60; the appliance refuses more than its maximum).`,
  killswitch: `Usage:
  xks-proxy killswitch show [--local] [--key FILE] [ADMIN OPTIONS]
  xks-proxy killswitch engage --scope SCOPE --reason TEXT --key FILE [ADMIN OPTIONS]
  xks-proxy killswitch approve-lift --scope SCOPE --reason TEXT --key FILE [ADMIN OPTIONS]
  xks-proxy killswitch emergency-engage --scope SCOPE --reason TEXT --operator NAME [--config FILE]
  xks-proxy killswitch repair --operator NAME --reason TEXT --confirm [--from-backup | --adopt-unauthenticated] [--config FILE]

SCOPE: proxy | keystore:NAME | key:NAME/EXTERNALKEYID (a key block stops every id, in any key
  store, that names the same HSM key; "show" lists them under each block's "covers")
ADMIN OPTIONS: --admin-url URL (default: from control.admin of the config), --ca FILE (TLS trust
  anchor; default: control.admin.tls.certFile), --role operator|auditor, --config FILE.

engage:           blocks the scope at once (one operator); returns once no HSM operation runs in it.
approve-lift:     one operator's approval to lift; the block is lifted when control.killSwitch.
                  approvalsRequired distinct operators approved within the approval window.
emergency-engage: writes the block into the state files directly (run it on the appliance, as the
                  user that owns control.stateDir; it logs in to the HSM from the config to
                  authenticate the state); the running proxy picks it up within a second.
                  Fleet mode (control.store: etcd): writes it into etcd directly, for when no
                  member's admin API answers; every member applies it from its watch.
                  show --local reads the same store (the state folder, or etcd).
repair:           only when the state is not trusted (unreadable, tampered, rolled back, deleted;
                  the proxy fails closed): keeps the untrusted file as state.json.broken-*, writes
                  a new authenticated state (empty; --from-backup: the verified last good state;
                  --adopt-unauthenticated: a version 1 file from before state authentication) WITH a
                  proxy-scope block, which then needs the normal lift quorum.
                  Fleet mode: repairs the state in etcd (the untrusted value is kept under
                  <prefix>control/broken/<time>; --from-backup: the newest value in etcd's history
                  that verifies); every member applies it and stays blocked until the lift quorum.`,
  policy: `Usage:
  xks-proxy policy get --key-store NAME --key FILE [ADMIN OPTIONS]
  xks-proxy policy set --key-store NAME --file POLICY.json --reason TEXT --key FILE [ADMIN OPTIONS]
  xks-proxy policy delete --key-store NAME --reason TEXT --key FILE [ADMIN OPTIONS]
  xks-proxy policy validate --file POLICY.json

set: the policy is validated by the proxy before it replaces the one in force; if invalid, the
     errors are printed and the old policy stays. A tightening (only deny statements added, allow
     statements removed, default allow -> deny) applies at once; any other change, and delete,
     is one operator's approval and applies once control.killSwitch.approvalsRequired distinct
     operators sent the same change within the approval window (status 202 until then).
validate: the same checks, offline.`,
};

type Flags = Record<string, string | boolean | undefined>;
type Out = { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
const io: Out = { stdout: process.stdout, stderr: process.stderr };

function parse(argv: string[], options: Record<string, { type: 'string' | 'boolean' }>): { flags: Flags; positionals: string[] } {
  const { values, positionals } = parseArgs({ args: argv, options: { ...options, config: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  return { flags: values as Flags, positionals };
}

class UsageError extends Error {}

function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function loadCfg(flags: Flags): LoadedConfig {
  return loadConfig(configPathFrom(flags.config as string | undefined));
}

function tryLoadCfg(flags: Flags): LoadedConfig | undefined {
  try {
    return loadCfg(flags);
  } catch (e) {
    if (flags.config) throw e;
    return undefined;
  }
}

function controlOf(loaded: LoadedConfig) {
  const c = loaded.config.control;
  if (!c) throw new Error(`${loaded.file} has no "control" section`);
  return c;
}

function usage(topic: string, msg?: string): number {
  if (msg) io.stderr.write(`error: ${msg}\n\n`);
  (msg ? io.stderr : io.stdout).write(CONTROL_USAGE[topic] + '\n');
  return msg ? 2 : 0;
}

async function wrap(topic: string, f: () => Promise<number>): Promise<number> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof UsageError) return usage(topic, e.message);
    throw e;
  }
}

// ---- operator ------------------------------------------------------------------------------

export function operatorCommand(argv: string[]): Promise<number> {
  return wrap('operator', async () => {
    const { flags, positionals } = parse(argv, { name: { type: 'string' }, 'out-dir': { type: 'string' }, alg: { type: 'string' }, roles: { type: 'string' }, jwks: { type: 'string' }, key: { type: 'string' }, role: { type: 'string' }, audience: { type: 'string' }, ttl: { type: 'string' } });
    const sub = positionals[0];
    if (flags.help || !sub) return usage('operator', flags.help ? undefined : 'a subcommand is required');
    if (sub === 'keygen') {
      const alg = (flags.alg as string | undefined) ?? 'EdDSA';
      if (!(OPERATOR_ALGS as readonly string[]).includes(alg)) throw new UsageError(`--alg must be one of ${OPERATOR_ALGS.join(', ')}`);
      const roles = ((flags.roles as string | undefined) ?? 'operator').split(',').map((r) => r.trim());
      if (roles.some((r) => !(ROLES as readonly string[]).includes(r))) throw new UsageError(`--roles must list ${ROLES.join(', ')}`);
      const pair = await generateOperatorKey(need(flags, 'name'), alg as OperatorAlg, roles as Role[]);
      const files = writeOperatorKey(need(flags, 'out-dir'), pair, flags.jwks as string | undefined);
      io.stderr.write(`private key (keep it secret): ${files.privateFile}\npublic key: ${files.publicFile}${flags.jwks ? `\nadded to ${flags.jwks as string}` : `\nadd it to the appliance's JWKS file (control.admin.jwksFile)`}\n`);
      return 0;
    }
    if (sub === 'token') {
      io.stdout.write((await tokenFor(flags, (flags.role as string | undefined) ?? 'operator')) + '\n');
      return 0;
    }
    throw new UsageError(`unknown subcommand ${sub}`);
  });
}

async function tokenFor(flags: Flags, role: string): Promise<string> {
  const jwk = readPrivateJwk(need(flags, 'key'));
  let audience = flags.audience as string | undefined;
  if (!audience) {
    const cfg = tryLoadCfg(flags);
    audience = cfg?.config.control?.admin?.audience;
    if (!audience) throw new UsageError('--audience is required (no control.admin.audience in the config)');
  }
  const ttl = Number(flags.ttl ?? 60);
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > 3600) throw new UsageError('--ttl must be 1-3600 seconds');
  return mintOperatorToken({ privateJwk: jwk, role, audience, ttlSeconds: ttl });
}

// ---- admin API client ------------------------------------------------------------------------

interface AdminTarget {
  url: URL;
  ca: Buffer | undefined;
}

function adminTarget(flags: Flags): AdminTarget {
  const cfg = tryLoadCfg(flags);
  const admin = cfg?.config.control?.admin;
  let url = flags['admin-url'] as string | undefined;
  if (!url) {
    if (!admin) throw new UsageError('--admin-url is required (no control.admin in the config)');
    const host = admin.host === '0.0.0.0' || admin.host === '::' ? '127.0.0.1' : admin.host;
    url = `${admin.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${admin.port}`;
  }
  const caFile = (flags.ca as string | undefined) ?? admin?.tls?.certFile;
  return { url: new URL(url), ca: caFile && url.startsWith('https:') ? fs.readFileSync(caFile) : undefined };
}

export interface AdminResponse {
  status: number;
  json: any;
}

export function adminRequest(t: AdminTarget, method: string, path: string, token: string, body?: unknown): Promise<AdminResponse> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const u = new URL(path, t.url);
  const lib = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(
      u,
      { method, headers: { authorization: `Bearer ${token}`, ...(text !== undefined ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) } : {}) }, ...(t.ca ? { ca: t.ca } : {}), timeout: 30000 },
      (res) => {
        collectResponse(res).then((r) => resolve({ status: r.status, json: r.json ?? { raw: r.text } }), reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('admin API timed out')));
    req.on('error', reject);
    if (text !== undefined) req.write(text);
    req.end();
  });
}

/** One admin API call with a fresh token (--key); prints the answer; exit code 0 for a 2xx. */
export async function callAdmin(flags: Flags, method: string, path: string, body?: unknown): Promise<number> {
  const target = adminTarget(flags);
  const token = await tokenFor(flags, (flags.role as string | undefined) ?? 'operator');
  let r: AdminResponse;
  try {
    r = await adminRequest(target, method, path, token, body);
  } catch (e) {
    io.stderr.write(`error: admin API at ${target.url.origin} unreachable (${(e as Error).message}). On the appliance, "xks-proxy killswitch emergency-engage" works without it.\n`);
    return 1;
  }
  (r.status < 300 ? io.stdout : io.stderr).write(JSON.stringify(r.json, null, 2) + '\n');
  return r.status < 300 ? 0 : 1;
}

export const ADMIN_FLAGS = { key: { type: 'string' }, 'admin-url': { type: 'string' }, ca: { type: 'string' }, role: { type: 'string' }, audience: { type: 'string' }, ttl: { type: 'string' } } as const;

// ---- killswitch ------------------------------------------------------------------------------

/**
 * The state store of the config, authenticated with the configured HSM (the emergency commands
 * run on the appliance, with the proxy's PIN source), for the duration of `fn`.
 */
async function withLocalStore<T>(loaded: LoadedConfig, fn: (store: StateStore) => Promise<T>): Promise<T> {
  const c = controlOf(loaded);
  if (c.stateDir === undefined) throw new Error('control.stateDir is not set: the state folder of the file store (control.store: file) is unknown');
  const stateDir = c.stateDir;
  const hsm = await openPkcs11Backend({ ...loaded.config.hsm, pool: { ...loaded.config.hsm.pool, size: 1 } }, readSecret(loaded.config.hsm.pin), createSilentLogger());
  try {
    return await fn(new StateStore(stateDir, hsmStateAuthenticator(hsm, c.stateAuth)));
  } finally {
    await hsm.close();
  }
}

/**
 * The store the proxies use (control.store): the state folder, or in fleet mode the fleet's etcd
 * prefix, straight (so that the emergency engage works when no member's admin API answers).
 */
async function withConfiguredStore<T>(loaded: LoadedConfig, fn: (store: Pick<ControlStore, 'read' | 'mutate'> & Pick<StateStore, 'repair'>) => Promise<T>): Promise<T> {
  const c = controlOf(loaded);
  if (c.store !== 'etcd' || !c.etcd) return withLocalStore(loaded, fn);
  const e = c.etcd;
  const client = connectEtcd(e);
  const hsm = await openPkcs11Backend({ ...loaded.config.hsm, pool: { ...loaded.config.hsm.pool, size: 1 } }, readSecret(loaded.config.hsm.pin), createSilentLogger());
  try {
    return await fn(new EtcdControlStore(client, hsmStateAuthenticator(hsm, c.stateAuth), { prefix: normalisePrefix(e.prefix), maxStalenessMs: e.maxStalenessMs, keepLastKnownMs: e.keepLastKnownMs, log: createSilentLogger() }));
  } finally {
    await hsm.close();
    client.close();
  }
}

function localActor(operator: string): Actor {
  let osUser: string | undefined;
  try {
    osUser = os.userInfo().username;
  } catch {
    osUser = undefined;
  }
  return { operator, via: 'local-cli', osUser };
}

export function killswitchCommand(argv: string[]): Promise<number> {
  return wrap('killswitch', async () => {
    const { flags, positionals } = parse(argv, { ...ADMIN_FLAGS, scope: { type: 'string' }, reason: { type: 'string' }, operator: { type: 'string' }, local: { type: 'boolean' }, confirm: { type: 'boolean' }, 'from-backup': { type: 'boolean' }, 'adopt-unauthenticated': { type: 'boolean' } });
    const sub = positionals[0];
    if (flags.help || !sub) return usage('killswitch', flags.help ? undefined : 'a subcommand is required');
    switch (sub) {
      case 'show':
        if (flags.local) {
          const loaded = loadCfg(flags);
          const r = await withConfiguredStore(loaded, (store) => store.read());
          // What each block covers in the configuration file as it is now (ids sharing an HSM key).
          const dir = directoryOf(loaded.config.keyStores);
          if (r.ok) io.stdout.write(JSON.stringify({ generation: r.state.generation, writtenAt: r.state.writtenAt, blocks: r.state.body.blocks.map((b) => ({ ...b, covers: blockCoverage(b, dir) })), approvals: r.state.body.approvals, policyApprovals: r.state.body.policyApprovals ?? [], retireApprovals: r.state.body.retireApprovals ?? [], policies: Object.keys(r.state.body.policies) }, null, 2) + '\n');
          else io.stdout.write(JSON.stringify({ failClosed: r.fresh ? 'state folder not initialised (the proxy has never run)' : r.reason }, null, 2) + '\n');
          return r.ok ? 0 : 1;
        }
        return callAdmin(flags, 'GET', '/admin/v1/state');
      case 'engage':
      case 'approve-lift':
        return callAdmin(flags, 'POST', `/admin/v1/kill-switch/${sub}`, { scope: need(flags, 'scope'), reason: need(flags, 'reason') });
      case 'emergency-engage': {
        const loaded = loadCfg(flags);
        const dir = directoryOf(loaded.config.keyStores);
        const scope = checkScope(need(flags, 'scope'), dir.names());
        const sc = parseScope(scope);
        const hsmKey = sc.kind === 'key' ? dir.hsmKeyOf(sc.keyStore, sc.externalKeyId) : undefined;
        const reason = checkReason(need(flags, 'reason'));
        const by = localActor(need(flags, 'operator'));
        const out = await withConfiguredStore(loaded, async (store) => {
          const cur = await store.read();
          if (!cur.ok && !cur.fresh) return cur.reason;
          return (await store.mutate((b) => ({ body: applyEngage(b, scope, by, reason, Date.now(), hsmKey), result: undefined }), Date.now)).state;
        });
        if (typeof out === 'string') {
          io.stderr.write(`the state is not trusted, so the proxy already blocks everything (fail closed): ${out}\n`);
          return 0;
        }
        const state = out;
        io.stdout.write(JSON.stringify({ engaged: true, scope, generation: state.generation, by }, null, 2) + '\n');
        io.stderr.write(loaded.config.control?.store === 'etcd' ? `written to etcd (revision ${state.revision}); every member applies it from its watch (xks-proxy fleet status shows who has).\n` : 'written to the state file; a running proxy picks it up within control.watchIntervalMs (fs.watch usually at once).\n');
        return 0;
      }
      case 'repair': {
        if (!flags.confirm) throw new UsageError('repair replaces the state file: add --confirm');
        const loaded = loadCfg(flags);
        const by = localActor(need(flags, 'operator'));
        const reason = checkReason(need(flags, 'reason'));
        if (flags['from-backup'] && flags['adopt-unauthenticated']) throw new UsageError('--from-backup and --adopt-unauthenticated exclude each other');
        const source: RepairSource = flags['from-backup'] ? 'backup' : flags['adopt-unauthenticated'] ? 'adopt-unauthenticated' : 'empty';
        const state = await withConfiguredStore(loaded, (store) => store.repair(source, (base, note) => applyRepair(base ?? { blocks: [], approvals: [], policies: {}, history: [] }, by, reason, Date.now(), note)));
        io.stdout.write(JSON.stringify({ repaired: true, generation: state.generation, ...(state.revision !== undefined ? { revision: state.revision } : {}), blocks: state.body.blocks.map((b) => b.scope), policies: Object.keys(state.body.policies), note: state.body.history[state.body.history.length - 1]?.detail }, null, 2) + '\n');
        io.stderr.write(`${loaded.config.control?.store === 'etcd' ? 'written to etcd; every member of the fleet applies it from its watch and' : 'the proxy'} stays blocked (scope proxy) until the lift quorum approves: xks-proxy killswitch approve-lift --scope proxy ...\n`);
        return 0;
      }
      default:
        throw new UsageError(`unknown subcommand ${sub}`);
    }
  });
}

// ---- policy ----------------------------------------------------------------------------------

export function policyCommand(argv: string[]): Promise<number> {
  return wrap('policy', async () => {
    const { flags, positionals } = parse(argv, { ...ADMIN_FLAGS, 'key-store': { type: 'string' }, file: { type: 'string' }, reason: { type: 'string' } });
    const sub = positionals[0];
    if (flags.help || !sub) return usage('policy', flags.help ? undefined : 'a subcommand is required');
    const readPolicy = (): unknown => JSON.parse(fs.readFileSync(need(flags, 'file'), 'utf8'));
    switch (sub) {
      case 'validate': {
        const v = validatePolicy(readPolicy());
        if (v.ok) io.stdout.write(`valid: ${v.policy.statements.length} statements, defaultDecision ${v.policy.defaultDecision}\n`);
        else io.stderr.write(`invalid policy:\n${v.errors.map((e) => `  - ${e}`).join('\n')}\n`);
        return v.ok ? 0 : 1;
      }
      case 'get':
        return callAdmin(flags, 'GET', `/admin/v1/policies/${encodeURIComponent(need(flags, 'key-store'))}`);
      case 'set':
        return callAdmin(flags, 'PUT', `/admin/v1/policies/${encodeURIComponent(need(flags, 'key-store'))}`, { policy: readPolicy(), reason: need(flags, 'reason') });
      case 'delete':
        return callAdmin(flags, 'DELETE', `/admin/v1/policies/${encodeURIComponent(need(flags, 'key-store'))}`, { reason: need(flags, 'reason') });
      default:
        throw new UsageError(`unknown subcommand ${sub}`);
    }
  });
}
