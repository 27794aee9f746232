/**
 * Hot reload (SIGHUP, or RunningProxy.reload()): re-read the configuration file, validate all of
 * it, and apply what can change without dropping connections. An invalid file is rejected with
 * its problems and the running configuration stays.
 *
 * Applied at once: TLS certificate, key and client CA (new connections), allowed mTLS subjects,
 * key stores (prefixes, keys, inline and folder credentials, quotas), the log level, and the
 * kill-switch / policy state re-read from its file. Everything else (listeners, HSM module and
 * pool, limits, audit, metrics, control settings) is reported as needing a restart.
 */
import { loadConfig } from './config/load';
import type { Config } from './config/schema';

export interface ReloadResult {
  applied: string[];
  /** Changed settings that only a restart applies. */
  needsRestart: string[];
}

/** Sections (or sub-settings) that a reload does not apply. */
function fixedParts(c: Readonly<Config>): Record<string, unknown> {
  const { tls, ...server } = c.server;
  return {
    server,
    'server.tls (on/off, client certificates on/off)': { tls: tls !== undefined, clientAuth: tls?.clientAuth !== undefined },
    healthEndpoints: c.healthEndpoints,
    health: c.health,
    hsm: c.hsm,
    proxy: c.proxy,
    limits: c.limits,
    sigv4: c.sigv4,
    'log (except level)': { ...c.log, level: undefined },
    metrics: c.metrics,
    audit: c.audit,
    control: c.control,
  };
}

export function restartOnlyChanges(current: Readonly<Config>, next: Readonly<Config>): string[] {
  const a = fixedParts(current);
  const b = fixedParts(next);
  return Object.keys(a).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

export interface ReloadTargets {
  tls(tls: NonNullable<Config['server']['tls']>): void;
  keyStores(keyStores: Config['keyStores']): void;
  logLevel(level: string): void;
  controlState(): void;
}

/** Throws ConfigError (with every problem) when the file is invalid; nothing is applied then. */
export function reloadConfig(file: string, current: Readonly<Config>, apply: ReloadTargets, env: NodeJS.ProcessEnv = process.env): { next: Readonly<Config>; result: ReloadResult } {
  const { config: next } = loadConfig(file, env);
  const needsRestart = restartOnlyChanges(current, next);
  const applied: string[] = [];
  if (next.server.tls && current.server.tls && !next.server.plainHttp) {
    apply.tls(next.server.tls);
    applied.push('server.tls certificate, key and client CA');
  }
  apply.keyStores(next.keyStores);
  applied.push('keyStores');
  apply.logLevel(next.log.level);
  applied.push('log.level');
  apply.controlState();
  applied.push('control state file');
  return { next, result: { applied, needsRestart } };
}
