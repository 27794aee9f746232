/**
 * `xks-proxy keys rotate|versions|retire`: key versions behind an external key
 * (docs/runbook-key-rotation.md).
 */
import type { LoadedConfig } from '../config/load';
import { listKeyVersions, rotateKey } from '../hsm/key-version-admin';
import { UsageLedger } from '../xks/usage-ledger';

export const KEY_VERSION_USAGE = `  xks-proxy keys rotate   (--key-store NAME --key-id ID | --label LABEL) [--config FILE]
  xks-proxy keys versions (--key-store NAME --key-id ID | --label LABEL) [--json] [--config FILE]
  xks-proxy keys retire   (--key-store NAME --key-id ID | --label LABEL) --version N [--config FILE]

rotate:   generates a new AES-256 version of the key in the HSM (same usage, not extractable);
          every proxy on the token encrypts with it within keyVersions.rescanIntervalMs, and
          older versions keep decrypting what they sealed.
versions: each version with its creation day and this host's encryption and decrypt counts.
retire:   destroying a version makes its ciphertexts undecryptable for ever; it needs a quorum
          approval that this release cannot record yet, so it only reports and refuses.`;

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

async function versionRows(loaded: LoadedConfig, pin: string, label: string): Promise<VersionRow[]> {
  const rotated = await listKeyVersions(loaded.config.hsm, pin, label);
  const current = rotated.length ? rotated[rotated.length - 1]!.version : 0;
  const dir = loaded.config.keyVersions.usageDir;
  const usage = dir === undefined ? new Map() : new UsageLedger({ dir, reserveBlock: 1 }).usageOf(label);
  return [{ version: 0, created: undefined as string | undefined }, ...rotated].map((v) => {
    const u = usage.get(v.version);
    return {
      version: v.version,
      state: v.version === current ? 'current' : 'decrypt-only',
      created: v.created,
      encryptions: u?.encryptions ?? 0,
      decrypts: u?.decrypts ?? 0,
      lastDecrypt: u?.lastDecryptMs !== undefined ? new Date(u.lastDecryptMs).toISOString() : undefined,
    };
  });
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
    if (flags.json) process.stdout.write(JSON.stringify({ label, usageCountedOnThisHost: loaded.config.keyVersions.usageDir !== undefined, versions: rows }, null, 2) + '\n');
    else {
      process.stdout.write(formatTable([['VERSION', 'STATE', 'CREATED', 'ENCRYPTIONS', 'DECRYPTS', 'LAST DECRYPT'], ...rows.map((r) => [String(r.version), r.state, r.created ?? '-', String(r.encryptions), String(r.decrypts), r.lastDecrypt ?? '-'])]));
      if (loaded.config.keyVersions.usageDir === undefined) process.stdout.write('(keyVersions.usageDir is not set: no counts are kept on disk)\n');
    }
    return 0;
  }
  // retire
  const version = Number(flags.version);
  const row = rows.find((r) => r.version === version);
  if (!row) throw new Error(`key "${label}" has no version ${String(flags.version)}`);
  if (row.state === 'current') throw new Error(`version ${version} is the current version of key "${label}": rotate first`);
  process.stderr.write(
    `WARNING: retiring version ${version} of key "${label}" destroys it in the HSM; every ciphertext it sealed ` +
      `(KMS data keys and the data they protect) becomes undecryptable for ever.\n` +
      `This host counted ${row.decrypts} decrypts with it, the last at ${row.lastDecrypt ?? 'never'} (other proxies keep their own counts).\n` +
      'REFUSED: retiring a version needs a quorum approval recorded through the admin API, which this release cannot record yet. Nothing was destroyed.\n',
  );
  return 1;
}
