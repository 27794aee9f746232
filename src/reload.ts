/**
 * Hot reload (SIGHUP, or RunningProxy.reload()): re-read the configuration file, validate all of
 * it, and apply what can change without dropping connections. An invalid file is rejected with
 * its problems and the running configuration stays.
 *
 * Applied at once: TLS certificate, key and client CA (new connections), allowed mTLS subjects,
 * key stores (prefixes, keys, inline and folder credentials, quotas), the log level, and the
 * kill-switch / policy state re-read from its file. Everything else (listeners, HSM module and
 * pool, limits, audit, metrics, control settings) is reported as needing a restart.
 *
 * LiveConfiguration is the one place that holds the configuration in force and the key store
 * registry built from it; every part of the appliance reads them from there (the control plane's
 * key store names and key -> HSM key mappings included), in one process, in a cluster worker and in
 * the cluster primary alike. A reload goes through it and nowhere else.
 */
import { KeyStoreRegistry } from './auth/key-stores';
import { loadConfig } from './config/load';
import type { Config } from './config/schema';
import type { AppLogger } from './log/logger';

export interface ReloadResult {
  applied: string[];
  /** Changed settings that only a restart applies. */
  needsRestart: string[];
}

/**
 * The configuration less what a reload applies (the TLS files and allowed client subjects, the
 * key stores, the log level). Everything else is compared whole, section by section, so that a
 * setting added to the schema later counts as "needs a restart" without being listed anywhere:
 * a forgotten entry can only over-report, never hide a change.
 */
function withoutLiveParts(c: Readonly<Config>): Record<string, unknown> {
  const { keyStores: _live, ...rest } = c;
  const tls = c.server.tls;
  return {
    ...rest,
    // Turning TLS or client certificates on or off changes the listener: a restart.
    server: { ...c.server, tls: { on: tls !== undefined, clientAuth: tls?.clientAuth !== undefined } },
    log: { ...c.log, level: undefined },
  };
}

/** Top-level sections whose settings changed beyond what a reload applies. */
export function restartOnlyChanges(current: Readonly<Config>, next: Readonly<Config>): string[] {
  const a = withoutLiveParts(current);
  const b = withoutLiveParts(next);
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

export interface ReloadTargets {
  tls(tls: NonNullable<Config['server']['tls']>): void;
  keyStores(keyStores: Config['keyStores']): void;
  logLevel(level: string): void;
  controlState(): void;
}

/**
 * Throws ConfigError (with every problem) when the file is invalid; nothing is applied then.
 * `view` turns the file's configuration into this process's (a cluster worker's, say), as at start.
 */
export function reloadConfig(file: string, current: Readonly<Config>, apply: ReloadTargets, env: NodeJS.ProcessEnv = process.env, view: (c: Readonly<Config>) => Readonly<Config> = (c) => c): { next: Readonly<Config>; result: ReloadResult } {
  const next = view(loadConfig(file, env).config);
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

/** What a part of the appliance re-applies on reload (key stores are the registry's own). */
export type ReloadPart = Partial<Omit<ReloadTargets, 'keyStores'>>;

export class LiveConfiguration {
  /** The key stores in force: replaced in place on reload, so every holder sees the new ones. */
  readonly registry: KeyStoreRegistry;
  private current: Readonly<Config>;
  private readonly parts: ReloadPart[] = [];

  constructor(
    readonly file: string,
    initial: Readonly<Config>,
    log: AppLogger,
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly view: (c: Readonly<Config>) => Readonly<Config> = (c) => c,
  ) {
    this.current = initial;
    this.registry = new KeyStoreRegistry(initial, log, env);
  }

  /** The configuration in force now. */
  get config(): Readonly<Config> {
    return this.current;
  }

  /** A part that re-applies its share of the configuration on every reload, after the key stores. */
  onReload(part: ReloadPart): void {
    this.parts.push(part);
  }

  /** Throws ConfigError when the file is invalid; the configuration in force stays. */
  reload(): ReloadResult {
    const each = <K extends keyof ReloadPart>(k: K, ...args: Parameters<NonNullable<ReloadPart[K]>>) => {
      for (const p of this.parts) (p[k] as ((...a: typeof args) => void) | undefined)?.(...args);
    };
    const { next, result } = reloadConfig(
      this.file,
      this.current,
      {
        tls: (tls) => each('tls', tls),
        keyStores: (ks) => this.registry.replaceKeyStores(ks),
        logLevel: (level) => each('logLevel', level),
        controlState: () => each('controlState'),
      },
      this.env,
      this.view,
    );
    this.current = next;
    return result;
  }
}
