/**
 * `xks-proxy import-config SETTINGS.toml`: the AWS sample XKS proxy's settings as this proxy's
 * configuration (src/config/import-sample.ts), written to a folder with the secrets in files of
 * their own (mode 0600) and validated by the same loader `serve` uses.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseToml } from 'smol-toml';
import YAML from 'yaml';
import { ConfigError, loadConfig } from '../config/load';
import { formatImportReport, translateSampleSettings } from '../config/import-sample';

export const IMPORT_USAGE = `Usage: xks-proxy import-config SETTINGS.toml --token-label LABEL [--out-dir DIR]
        [--module-env NAME=VALUE ...] [--json]

Reads the AWS sample XKS proxy's settings file (TOML) and writes this proxy's configuration:
  DIR/xks-proxy.yaml                         server, TLS, key stores, HSM, limits, log level
  DIR/credentials/<key store>/<AKID>.secret  each key store's SigV4 secret (mode 0600)
  DIR/secrets/hsm-pin                        the HSM user PIN (mode 0600)
then validates the result and reports every setting: ok (translated), NOTE (translated with a
change of meaning to check) or TODO (not translated, and what to do). Secrets are never printed.
--token-label names the HSM token (the sample's settings do not); --module-env passes environment
the PKCS#11 module needs (for SoftHSM2: SOFTHSM2_CONF=...). DIR defaults to ./xks-import and must
not hold files of the same names. Run \`xks-proxy serve --config DIR/xks-proxy.yaml\` next, and
\`xks-proxy check\` against it (docs/runbook-migrate-from-aws-sample.md).
Exit status: 0 written and valid; 1 written but the configuration does not validate (fix and
re-check with serve); 2 usage error or unreadable settings.`;

function usageError(msg: string): number {
  process.stderr.write(`error: ${msg}\n\n${IMPORT_USAGE}\n`);
  return 2;
}

function writeNew(file: string, content: string, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  // 'wx': never overwrite what an operator already has there.
  fs.writeFileSync(file, content, { mode, flag: 'wx' });
}

export async function importConfigCommand(argv: string[]): Promise<number> {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: { 'token-label': { type: 'string' }, 'out-dir': { type: 'string' }, 'module-env': { type: 'string', multiple: true }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    return usageError((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(IMPORT_USAGE + '\n');
    return 0;
  }
  const settings = positionals[0];
  if (!settings || positionals.length > 1) return usageError('exactly one settings file');
  const tokenLabel = values['token-label'];
  if (!tokenLabel) return usageError('--token-label is required (the sample settings do not name the token)');
  const moduleEnv: Record<string, string> = {};
  for (const kv of values['module-env'] ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) return usageError(`--module-env takes NAME=VALUE, not ${kv}`);
    moduleEnv[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(fs.readFileSync(settings, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    // The TOML error quotes the offending line, which may hold a secret: only its position.
    const where = /line (\d+)/i.exec((e as Error).message)?.[0] ?? 'unknown position';
    process.stderr.write(`error: ${settings} is not a readable TOML file (${(e as NodeJS.ErrnoException).code ?? where})\n`);
    return 2;
  }
  const outDir = path.resolve(values['out-dir'] ?? 'xks-import');
  const result = translateSampleSettings(raw, { outDir, settingsDir: path.dirname(path.resolve(settings)), tokenLabel, moduleEnv });
  const configFile = path.join(outDir, 'xks-proxy.yaml');
  const header = `# Imported by xks-proxy import-config from ${path.resolve(settings)} on ${new Date().toISOString()}.\n# Relative paths are relative to this file. Secrets are in the files it names, never here.\n`;
  try {
    for (const f of result.secretFiles) writeNew(path.join(outDir, f.path), f.content, 0o600);
    writeNew(configFile, header + YAML.stringify(result.config), 0o600);
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message} (nothing is overwritten: choose another --out-dir or move the old files away)\n`);
    return 2;
  }
  let problems: string[] = [];
  try {
    loadConfig(configFile);
  } catch (e) {
    problems = e instanceof ConfigError ? e.problems : [(e as Error).message];
  }
  if (values.json) process.stdout.write(JSON.stringify({ configFile, secretFiles: result.secretFiles.map((f) => path.join(outDir, f.path)), report: result.report, problems }, null, 2) + '\n');
  else {
    process.stdout.write(`wrote ${configFile} and ${result.secretFiles.length} secret file(s) under ${outDir}\n\n${formatImportReport(result.report)}\n`);
    if (problems.length) process.stdout.write(`\nthe configuration does not validate yet:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
  }
  return problems.length ? 1 : 0;
}
