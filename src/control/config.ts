/**
 * Configuration of the sovereignty controls (kill switch, key blocking, allowlists) and of the
 * admin listener. Kept out of config/schema.ts so that the control plane owns its options; the
 * main schema only mounts `control` (optional: without it the proxy runs with no kill switch,
 * no allowlists and no admin API, and says so at start-up).
 */
import { z } from 'zod';

const LOOPBACK_HOSTS = new Set(['127.0.0.1', '::1', 'localhost', '::ffff:127.0.0.1']);

/** Plain HTTP on the admin listener is allowed only on the loopback interface. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

export const AdminConfig = z
  .object({
    enabled: z.boolean().default(true),
    /** Loopback by default: the admin API is for operators on the appliance or through a tunnel. */
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(9444),
    /** The JWT "aud" every operator token must name: this appliance, e.g. "xks-proxy:prod-eu-1". */
    audience: z.string().min(1).max(256),
    /** JWKS file (public keys only, each with a "kid" = operator name); re-read when it changes. */
    jwksFile: z.string().min(1),
    /** Required unless `host` is a loopback address. clientCaFile turns on client certificates. */
    tls: z
      .object({
        certFile: z.string().min(1),
        keyFile: z.string().min(1),
        clientCaFile: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
    /** exp - iat may not exceed this: operator tokens are short-lived. */
    maxTokenLifetimeSeconds: z.number().int().min(10).max(3600).default(300),
    clockToleranceSeconds: z.number().int().min(0).max(120).default(5),
    /** Used jti values remembered until their token expires; beyond this many, new tokens are refused. */
    replayCacheSize: z.number().int().min(100).max(1_000_000).default(10_000),
  })
  .strict();
export type AdminConfig = z.infer<typeof AdminConfig>;

const STATE_AUTH_DEFAULTS = { hsmKeyLabel: 'xks-control-state', anchorLabel: 'xks-control-state-generation' };
const KILL_SWITCH_DEFAULTS = { approvalsRequired: 2, approvalWindowSeconds: 3600, drainTimeoutMs: 5000 };

export const ControlConfig = z
  .object({
    /** Durable state (kill switch, approvals, policies): state.json, written atomically. */
    stateDir: z.string().min(1),
    killSwitch: z
      .object({
        /** Distinct operators whose approvals lift a block (engaging needs one). */
        approvalsRequired: z.number().int().min(1).max(10).default(KILL_SWITCH_DEFAULTS.approvalsRequired),
        /** Approvals older than this no longer count. */
        approvalWindowSeconds: z.number().int().min(10).max(7 * 86400).default(KILL_SWITCH_DEFAULTS.approvalWindowSeconds),
        /** How long an engage waits for in-flight operations in its scope before it reports. */
        drainTimeoutMs: z.number().int().min(0).max(60000).default(KILL_SWITCH_DEFAULTS.drainTimeoutMs),
      })
      .strict()
      .default(KILL_SWITCH_DEFAULTS),
    policies: z
      .object({
        /**
         * What a key store without an allowlist policy allows: "allow" (everything; the default, as
         * before policies existed) or "deny" (nothing until a policy allows it: default-deny).
         */
        defaultForKeyStoresWithoutPolicy: z.enum(['allow', 'deny']).default('allow'),
      })
      .strict()
      .default({ defaultForKeyStoresWithoutPolicy: 'allow' }),
    /**
     * The state file is authenticated inside the HSM (docs/runbook-kill-switch.md "Tampering"): an
     * HMAC-SHA256 with the token's key `hsmKeyLabel` (create it: xks-proxy keys create --type hmac
     * --label xks-control-state), and the highest generation kept in the token's private data
     * object `anchorLabel`, so that an older file is refused. Every state folder that shares one
     * token needs an anchorLabel of its own.
     */
    stateAuth: z
      .object({
        hsmKeyLabel: z.string().min(1).max(256).default(STATE_AUTH_DEFAULTS.hsmKeyLabel),
        anchorLabel: z.string().min(1).max(256).default(STATE_AUTH_DEFAULTS.anchorLabel),
      })
      .strict()
      .default(STATE_AUTH_DEFAULTS),
    /** Fallback poll of the state file (changes made by the emergency CLI); fs.watch is the fast path. */
    watchIntervalMs: z.number().int().min(50).max(60000).default(1000),
    admin: AdminConfig.optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.admin && c.admin.enabled && !isLoopbackHost(c.admin.host) && !c.admin.tls) {
      ctx.addIssue({ code: 'custom', path: ['admin', 'tls'], message: 'required when admin.host is not a loopback address' });
    }
  });
export type ControlConfig = z.infer<typeof ControlConfig>;

/** Relative paths are relative to the config file, like every other path. */
export function resolveControlPaths(c: ControlConfig, abs: (p: string) => string): ControlConfig {
  return {
    ...c,
    stateDir: abs(c.stateDir),
    admin: c.admin && {
      ...c.admin,
      jwksFile: abs(c.admin.jwksFile),
      tls: c.admin.tls && {
        certFile: abs(c.admin.tls.certFile),
        keyFile: abs(c.admin.tls.keyFile),
        clientCaFile: c.admin.tls.clientCaFile === undefined ? undefined : abs(c.admin.tls.clientCaFile),
      },
    },
  };
}
