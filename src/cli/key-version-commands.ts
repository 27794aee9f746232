/**
 * `xks-proxy keys rotate|versions|retire`: key versions behind an external key
 * (docs/runbook-key-rotation.md).
 */
import type { LoadedConfig } from '../config/load';
import { hasOriginalVersion, listKeyVersions, rotateKey } from '../hsm/key-version-admin';
import { retireWarning } from '../xks/key-retirement';
import { connectEtcd, normalisePrefix } from '../control/etcd-client';
import { EtcdEncryptionCounter } from '../control/etcd-encryption-counter';
import { createSilentLogger } from '../log/logger';
import { callAdmin } from './control-commands';
import { UsageLedger } from '../xks/usage-ledger';

export const KEY_VERSION_USAGE = `  xks-proxy keys rotate   (--key-store NAME --key-id ID | --label LABEL) [--config FILE]
  xks-proxy keys versions (--key-store NAME --key-id ID | --label LABEL) [--json] [--config FILE]
  xks-proxy keys retire   --key-store NAME --key-id ID --version N --reason TEXT --key FILE [--force-recent-use] [ADMIN OPTIONS]

rotate:   generates a new AES-256 version of the key in the HSM (same usage, not extractable);
          every proxy on the token encrypts with it within keyVersions.rescanIntervalMs, and
          older versions keep decrypting what they sealed.
versions: each version with its creation day, its encryption count (the fleet's from etcd in
          fleet mode, else this host's) and this host's decrypt count.
retire:   destroys a version in the HSM: every ciphertext it sealed becomes undecryptable for ever.
          Through the admin API (ADMIN OPTIONS as for killswitch: --admin-url, --ca, --config):
          each call is one operator's approval, pending until control.killSwitch.approvalsRequired
          distinct operators approved the same retirement within the approval window (exit 0,
          "pending"); the last approval destroys it. Refused for the current version, for the
          original while it is the only one, and for a version that decrypted within
          keyVersions.retireQuietDays unless every approval says --force-recent-use.`;

type Flags = Record<string, string | boolean | undefined>;

/** The HSM label the command is about, from --label or a configured key. */
export function resolveKeyLabel(loaded: LoadedConfig, flags: Flags): string {
  if (typeof flags.label === 'string') {
    if (flags['key-store'] !== undefined || flags['key-id'] !== undefined) throw new Error('give either --label or --key-store with --key-id');
    return flags.label;
  }
  const ksName = flags['key-store'];
  const id = flags['key-id'];
  if (typeof ksName !== 'string' || typeof id !== 'string') throw new Error('--key-store and --key-id (or --label) are required');
  const ks = loaded.config.keyStores.find((k) => k.name === ksName);
  if (!ks) throw new Error(`no key store "${ksName}" in ${loaded.file}`);
  const key = ks.keys.find((k) => k.externalKeyId === id);
  if (!key) throw new Error(`no key "${id}" in key store "${ksName}"`);
  return key.label ?? key.externalKeyId;
}

interface VersionRow {
  version: number;
  state: 'current' | 'decrypt-only';
  created: string | undefined;
  encryptions: number;
  decrypts: number;
  lastDecrypt: string | undefined;
}

/** Fleet mode: the fleet's encryption counts from etcd (the local ledger holds only decrypts there). */
async function fleetEncryptions(loaded: LoadedConfig, label: string, versions: number[]): Promise<Map<number, number> | undefined> {
  const e = loaded.config.control?.store === 'etcd' ? loaded.config.control.etcd : undefined;
  if (!e) return undefined;
  const client = connectEtcd(e);
  try {
    const counter = new EtcdEncryptionCounter(client, normalisePrefix(e.prefix), Math.max(500, e.maxStalenessMs), createSilentLogger());
    const out = new Map<number, number>();
    for (const v of versions) out.set(v, (await counter.current(label, v)) ?? 0);
    return out;
  } finally {
    client.close();
  }
}

async function versionRows(loaded: LoadedConfig, pin: string, label: string): Promise<VersionRow[]> {
  const rotated = await listKeyVersions(loaded.config.hsm, pin, label);
  const current = rotated.length ? rotated[rotated.length - 1]!.version : 0;
  const dir = loaded.config.keyVersions.usageDir;
  const usage = dir === undefined ? new Map() : new UsageLedger({ dir, reserveBlock: 1 }).usageOf(label);
  // A retired original (version 0) is no longer listed.
  const original = rotated.length === 0 || (await hasOriginalVersion(loaded.config.hsm, pin, label));
  const listed = [...(original ? [{ version: 0, created: undefined as string | undefined }] : []), ...rotated];
  const fleet = await fleetEncryptions(loaded, label, listed.map((v) => v.version));
  return listed.map((v) => {
    const u = usage.get(v.version);
    return {
      version: v.version,
      state: v.version === current ? 'current' : 'decrypt-only',
      created: v.created,
      encryptions: Math.max(u?.encryptions ?? 0, fleet?.get(v.version) ?? 0),
      decrypts: u?.decrypts ?? 0,
      lastDecrypt: u?.lastDecryptMs !== undefined ? new Date(u.lastDecryptMs).toISOString() : undefined,
    };
  });
}

/**
 * `keys retire`: one operator's approval through the admin API (src/xks/key-retirement.ts), like
 * the kill switch's approve-lift. Needs no HSM PIN: the proxy destroys the version.
 */
export async function retireCommand(flags: Flags): Promise<number> {
  const ksName = flags['key-store'];
  const id = flags['key-id'];
  if (flags.label !== undefined) throw new Error('retire takes --key-store and --key-id (the admin API retires only configured keys)');
  if (typeof ksName !== 'string' || typeof id !== 'string') throw new Error('--key-store and --key-id are required');
  const version = Number(flags.version);
  if (typeof flags.version !== 'string' || !/^[0-9]{1,10}$/.test(flags.version)) throw new Error('--version N is required (a version number from "keys versions")');
  if (typeof flags.reason !== 'string' || flags.reason.trim() === '') throw new Error('--reason is required');
  const force = flags['force-recent-use'] === true;
  process.stderr.write(
    `WARNING: ${retireWarning(`${ksName}/${id}`, version)}. There is no undo.\n` +
      (force ? 'WARNING: --force-recent-use: this approves retiring it although it decrypted within keyVersions.retireQuietDays; the audit records it.\n' : ''),
  );
  const code = await callAdmin(flags, 'POST', '/admin/v1/key-versions/retire', { keyStore: ksName, externalKeyId: id, version, reason: flags.reason, forceRecentUse: force });
  return code;
}

export async function keyVersionCommand(sub: 'rotate' | 'versions' | 'retire', loaded: LoadedConfig, pin: string, flags: Flags, formatTable: (rows: string[][]) => string): Promise<number> {
  const label = resolveKeyLabel(loaded, flags);
  if (sub === 'rotate') {
    const v = await rotateKey(loaded.config.hsm, pin, label);
    process.stdout.write(
      `created version ${v} of key "${label}" in token "${loaded.config.hsm.tokenLabel}".\n` +
        `Proxies on this token encrypt with it within keyVersions.rescanIntervalMs (${loaded.config.keyVersions.rescanIntervalMs} ms); older versions still decrypt.\n`,
    );
    return 0;
  }
  const rows = await versionRows(loaded, pin, label);
  if (sub === 'versions') {
    if (flags.json) process.stdout.write(JSON.stringify({ label, usageCountedOnThisHost: loaded.config.keyVersions.usageDir !== undefined, encryptionsFleetWide: loaded.config.control?.store === 'etcd', versions: rows }, null, 2) + '\n');
    else {
      process.stdout.write(formatTable([['VERSION', 'STATE', 'CREATED', 'ENCRYPTIONS', 'DECRYPTS', 'LAST DECRYPT'], ...rows.map((r) => [String(r.version), r.state, r.created ?? '-', String(r.encryptions), String(r.decrypts), r.lastDecrypt ?? '-'])]));
      if (loaded.config.keyVersions.usageDir === undefined) process.stdout.write('(keyVersions.usageDir is not set: no counts are kept on disk)\n');
    }
    return 0;
  }
  return retireCommand(flags);
}
