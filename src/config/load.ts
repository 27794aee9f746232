/**
 * Load the configuration: one file (YAML or JSON), then environment overrides, then validate
 * everything against the schema, report every problem with its path, resolve relative paths
 * against the config file's folder, and freeze.
 *
 * Environment overrides: XKS__SECTION__KEY=value, e.g. XKS__SERVER__PORT=9443 or
 * XKS__KEYSTORES__0__PATHPREFIX=/tenant-a. Segments match existing keys case-insensitively;
 * values are parsed as JSON when they parse (numbers, booleans, arrays), else taken as strings.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { ConfigSchema, type Config } from './schema';
import { secretFileProblems } from './secrets';
import { resolveControlPaths } from '../control/config';
import { schemaKeys } from './schema-keys';

export const ENV_PREFIX = 'XKS__';
export const DEFAULT_CONFIG_PATH = 'config/softhsm.yaml';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`invalid configuration ${file}:\n` + problems.map((p) => `  - ${p}`).join('\n'));
    this.name = 'ConfigError';
  }
}

export interface LoadedConfig {
  config: Readonly<Config>;
  file: string;
}

export function configPathFrom(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(explicit ?? env.XKS_CONFIG ?? DEFAULT_CONFIG_PATH);
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch (e) {
    throw new ConfigError(abs, [`cannot read the file (${(e as NodeJS.ErrnoException).code ?? 'error'})`]);
  }
  let raw: unknown;
  try {
    raw = abs.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new ConfigError(abs, [`cannot parse: ${(e as Error).message.split('\n')[0]}`]);
  }
  return parseConfig(raw ?? {}, abs, env);
}

/** Validate an already-parsed object (used by loadConfig and by tests). */
export function parseConfig(raw: unknown, file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(file, ['the top level must be a mapping']);
  }
  const problems: string[] = [];
  const merged = structuredClone(raw) as Record<string, unknown>;
  applyEnvOverrides(merged, env, problems);
  const result = ConfigSchema.safeParse(merged);
  if (!result.success) {
    for (const issue of result.error.issues) {
      const where = issue.path.length ? issue.path.join('.') : '(top level)';
      problems.push(`${where}: ${issue.message}`);
    }
  }
  if (problems.length || !result.success) throw new ConfigError(file, problems);
  const config = resolvePaths(result.data, path.dirname(file));
  // Secret files readable by others are refused here, so at start-up and at every reload alike.
  const secretProblems = secretFileProblems(config);
  if (secretProblems.length) throw new ConfigError(file, secretProblems);
  return { config: deepFreeze(config), file };
}

function applyEnvOverrides(target: Record<string, unknown>, env: NodeJS.ProcessEnv, problems: string[]): void {
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined) continue;
    const segments = name.slice(ENV_PREFIX.length).split('__').filter((s) => s.length > 0);
    if (segments.length === 0) continue;
    let node: Record<string, unknown> | unknown[] = target;
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      const last = i === segments.length - 1;
      const key = Array.isArray(node) ? Number(seg) : matchKey(node, seg);
      if (Array.isArray(node) && !Number.isInteger(key)) {
        problems.push(`${name}: "${seg}" is not an array index`);
        break;
      }
      const container = node as Record<string | number, unknown>;
      if (last) {
        container[key] = parseEnvValue(value);
      } else {
        const next = container[key];
        if (typeof next !== 'object' || next === null) container[key] = /^\d+$/.test(segments[i + 1]!) ? [] : {};
        node = container[key] as Record<string, unknown>;
      }
    }
  }
}

/** Env names are upper case; config keys are camelCase. Match case-insensitively, ignoring "_". */
function matchKey(obj: Record<string, unknown>, seg: string): string {
  const norm = (s: string) => s.replace(/_/g, '').toLowerCase();
  const found = Object.keys(obj).find((k) => norm(k) === norm(seg));
  if (found) return found;
  const known = KNOWN_KEYS.find((k) => norm(k) === norm(seg));
  return known ?? seg.toLowerCase();
}

/**
 * Keys that may be absent from the file but set by env (so their camelCase is known): every key
 * of the schema, derived from it (src/config/schema-keys.ts).
 */
const KNOWN_KEYS = schemaKeys(ConfigSchema);

function parseEnvValue(v: string): unknown {
  try {
    return JSON.parse(v);
  } catch {
    return v;
  }
}

function resolvePaths(c: Config, base: string): Config {
  const abs = (p: string) => path.resolve(base, p);
  const absSecret = <T extends { file?: string | undefined }>(s: T): T => (s.file === undefined ? s : { ...s, file: abs(s.file) });
  const moduleEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(c.hsm.moduleEnv)) moduleEnv[k] = v.startsWith('./') || v.startsWith('../') ? abs(v) : v;
  return {
    ...c,
    server: {
      ...c.server,
      tls: c.server.tls && {
        certFile: abs(c.server.tls.certFile),
        keyFile: abs(c.server.tls.keyFile),
        clientAuth: c.server.tls.clientAuth && { ...c.server.tls.clientAuth, caFile: abs(c.server.tls.clientAuth.caFile) },
      },
    },
    hsm: { ...c.hsm, module: c.hsm.module.includes('/') ? abs(c.hsm.module) : c.hsm.module, moduleEnv, pin: absSecret(c.hsm.pin) },
    keyStores: c.keyStores.map((ks) => ({
      ...ks,
      credentialsDir: ks.credentialsDir === undefined ? undefined : abs(ks.credentialsDir),
      credentials: ks.credentials.map((cr) => ({ ...cr, secret: absSecret(cr.secret) })),
    })),
    log: { ...c.log, requestLogFile: c.log.requestLogFile === undefined ? undefined : abs(c.log.requestLogFile) },
    audit: {
      ...c.audit,
      file: c.audit.file === undefined ? undefined : abs(c.audit.file),
      signingKeyFile: c.audit.signingKeyFile === undefined ? undefined : abs(c.audit.signingKeyFile),
      witnessFile: c.audit.witnessFile === undefined ? undefined : abs(c.audit.witnessFile),
    },
    control: c.control && resolveControlPaths(c.control, abs),
  };
}

function deepFreeze<T>(o: T): Readonly<T> {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
