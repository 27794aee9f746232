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

/**
 * Fleet mode (docs/fleet.md): the control state, the members and the admin token replay set in an
 * etcd v3 cluster, one fleet per key prefix.
 */
export const EtcdConfig = z
  .object({
    /** Client URLs of the etcd members, e.g. https://10.0.1.5:2379. */
    endpoints: z.array(z.string().regex(/^https?:\/\/[^/\s]+\/?$/, 'an etcd client URL: http(s)://host:port')).min(1),
    /** Every key of this fleet starts with it; proxies with one prefix are one fleet. */
    prefix: z.string().min(1).max(256).regex(/^[A-Za-z0-9._\/-]+$/).default('/xks-proxy/default/'),
    /** Client certificates (etcd --client-cert-auth); caFile alone checks the server only. */
    tls: z.object({ caFile: z.string().min(1), certFile: z.string().min(1).optional(), keyFile: z.string().min(1).optional() }).strict().optional(),
    /** etcd's own authentication (etcdctl user add): the password is read from a file (0600). */
    auth: z.object({ username: z.string().min(1).max(256), passwordFile: z.string().min(1) }).strict().optional(),
    /** This member's name in the fleet (defaults to the host name and the XKS port). */
    nodeId: z.string().min(1).max(128).regex(/^[A-Za-z0-9._:@-]+$/).optional(),
    /** What `fleet status` shows as this member's address (defaults to the XKS listener's). */
    advertiseAddress: z.string().min(1).max(256).optional(),
    /**
     * How long a member may go without confirming the control state (watch up and a quorum read
     * answered) before it fails closed: every crypto call refused, not ready.
     */
    maxStalenessMs: z.number().int().min(200).max(60_000).default(3000),
    /**
     * Availability over safety, off by default: keep serving with the last confirmed state for this
     * much longer after maxStalenessMs ran out (a block engaged elsewhere meanwhile is not seen).
     */
    keepLastKnownMs: z.number().int().min(0).max(600_000).default(0),
    /** Membership lease: a member that stops refreshing it leaves the fleet after this long. */
    leaseTtlSeconds: z.number().int().min(2).max(600).default(10),
    /** How long an engage waits for every live member to acknowledge before it names the missing. */
    ackTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
    /**
     * The AES-256 key in the token that encrypts the SigV4 secrets of keyStores[].fleetCredentials
     * (AES-GCM inside the HSM; never used for anything else). Create it once on the shared token:
     * xks-proxy keys create --label xks-credential-wrap
     */
    credentialWrapKeyLabel: z.string().min(1).max(256).default('xks-credential-wrap'),
  })
  .strict()
  .superRefine((e, ctx) => {
    // A member that lost contact must fail closed before its lease lets an engage stop waiting for it.
    if (e.leaseTtlSeconds * 1000 <= e.maxStalenessMs + e.keepLastKnownMs) {
      ctx.addIssue({ code: 'custom', path: ['leaseTtlSeconds'], message: 'must be longer than maxStalenessMs + keepLastKnownMs (a cut-off member must fail closed before it leaves the fleet)' });
    }
    if (e.tls && (e.tls.certFile === undefined) !== (e.tls.keyFile === undefined)) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'certFile and keyFile go together' });
  });
export type EtcdConfig = z.infer<typeof EtcdConfig>;

const STATE_AUTH_DEFAULTS = { hsmKeyLabel: 'xks-control-state', anchorLabel: 'xks-control-state-generation' };
const KILL_SWITCH_DEFAULTS = { approvalsRequired: 2, approvalWindowSeconds: 3600, drainTimeoutMs: 5000 };

export const ControlConfig = z
  .object({
    /** Where the control state lives: a folder on this host (file) or an etcd cluster shared by a fleet (etcd). */
    store: z.enum(['file', 'etcd']).default('file'),
    /** File store: state.json (kill switch, approvals, policies), written atomically. Required with store: file. */
    stateDir: z.string().min(1).optional(),
    etcd: EtcdConfig.optional(),
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
    if (c.store === 'file' && c.stateDir === undefined) ctx.addIssue({ code: 'custom', path: ['stateDir'], message: 'required with store: file' });
    if (c.store === 'etcd' && c.etcd === undefined) ctx.addIssue({ code: 'custom', path: ['etcd'], message: 'required with store: etcd' });
    if (c.admin && c.admin.enabled && !isLoopbackHost(c.admin.host) && !c.admin.tls) {
      ctx.addIssue({ code: 'custom', path: ['admin', 'tls'], message: 'required when admin.host is not a loopback address' });
    }
  });
export type ControlConfig = z.infer<typeof ControlConfig>;

/** Relative paths are relative to the config file, like every other path. */
export function resolveControlPaths(c: ControlConfig, abs: (p: string) => string): ControlConfig {
  return {
    ...c,
    stateDir: c.stateDir === undefined ? undefined : abs(c.stateDir),
    etcd: c.etcd && {
      ...c.etcd,
      tls: c.etcd.tls && { caFile: abs(c.etcd.tls.caFile), certFile: c.etcd.tls.certFile === undefined ? undefined : abs(c.etcd.tls.certFile), keyFile: c.etcd.tls.keyFile === undefined ? undefined : abs(c.etcd.tls.keyFile) },
      auth: c.etcd.auth && { ...c.etcd.auth, passwordFile: abs(c.etcd.auth.passwordFile) },
    },
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
