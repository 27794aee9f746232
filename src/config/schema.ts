/**
 * The configuration schema: every option, its default and its bounds, in one place.
 * Validated once at start-up (load.ts), every problem reported with its path, then frozen.
 * PINs and SigV4 secrets never appear here as values: only where to read them (env var or file).
 */
import { z } from 'zod';
import { AUDIT_DEFAULTS, AuditConfig } from '../audit/config';
import { METRICS_DEFAULTS, MetricsConfig } from '../metrics/config';
import { ControlConfig } from '../control/config';
import { KEY_VERSIONS_DEFAULTS, KeyRotation, KeyVersionsConfig } from '../xks/key-versions-config';
import { autoWorkers } from './cpu-count';

/** A secret is read from an environment variable or a file, never written into the config. */
export const SecretSource = z
  .object({
    env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name').optional(),
    file: z.string().min(1).optional(),
  })
  .strict()
  .refine((s) => (s.env === undefined) !== (s.file === undefined), {
    message: 'give exactly one of "env" or "file"',
  });
export type SecretSource = z.infer<typeof SecretSource>;

/** Spec Appendix A: access key id is 20-30 characters of A-Z and 2-7. */
export const ACCESS_KEY_ID_RE = /^[A-Z2-7]{20,30}$/;
/** Spec Appendix A: secret is 43-64 characters of A-Za-z0-9+/= (>= 256 bits of entropy). */
export const SECRET_RE = /^[A-Za-z0-9+/=]{43,64}$/;
/** Spec "API operations": externalKeyId is 1-128 characters of A-Za-z0-9.-_ */
export const EXTERNAL_KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
/** Spec: XksProxyUriPath (prefix + /kms/xks/v1) is at most 128 characters of a-zA-Z0-9/-_ */
export const XKS_API_SUFFIX = '/kms/xks/v1';
const PATH_PREFIX_RE = /^(\/[A-Za-z0-9_-]+)*$/;

const Credential = z
  .object({
    accessKeyId: z.string().regex(ACCESS_KEY_ID_RE, 'must be 20-30 characters of A-Z and 2-7 (spec Appendix A)'),
    secret: SecretSource,
  })
  .strict();

const ExternalKey = z
  .object({
    externalKeyId: z.string().regex(EXTERNAL_KEY_ID_RE, 'must be 1-128 characters of A-Za-z0-9.-_'),
    /** CKA_LABEL of the key in the token; defaults to externalKeyId. */
    label: z.string().min(1).max(256).optional(),
    /** An operator-disabled key: GetKeyMetadata says DISABLED, Encrypt/Decrypt say InvalidStateException. */
    enabled: z.boolean().default(true),
    /** This key's rotation triggers (keyVersions.rotation otherwise). */
    rotation: KeyRotation.optional(),
  })
  .strict();

const KeyStore = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 characters of A-Za-z0-9_-'),
    /** "" or "/a/b": the part of XksProxyUriPath before /kms/xks/v1. */
    pathPrefix: z
      .string()
      .regex(PATH_PREFIX_RE, 'must be empty or "/segment[/segment...]" of A-Za-z0-9_-')
      .refine((p) => (p + XKS_API_SUFFIX).length <= 128, 'with /kms/xks/v1 appended it must be at most 128 characters'),
    /** Inline credentials (secret from env or file). */
    credentials: z.array(Credential).default([]),
    /**
     * A folder of <ACCESSKEYID>.secret files, one credential each, re-read while the proxy runs so
     * that credentials can be added and removed without a restart (spec "SigV4 credentials rotation").
     */
    credentialsDir: z.string().min(1).optional(),
    /**
     * Fleet mode (control.store: etcd) only: this key store also takes the credentials the fleet
     * distributes through etcd, each secret encrypted inside the HSM under
     * control.etcd.credentialWrapKeyLabel (docs/fleet.md "Credentials across the fleet"). `xks-proxy
     * credentials new` and the admin API then create them there, for every member at once.
     */
    fleetCredentials: z.boolean().optional(),
    keys: z.array(ExternalKey).default([]),
    /**
     * 'aws-sample': Decrypt also accepts ciphertexts made by the AWS sample XKS proxy, whose GCM AAD
     * hashes the request's AAD (src/xks/aad.ts), for key stores migrated from it on the same HSM
     * keys. Encrypt always uses the specification's layout. Default 'spec'.
     */
    compatibility: z.enum(['spec', 'aws-sample']).default('spec'),
    /** This key store's own request quota; beyond it, 429 ThrottlingException. None by default. */
    quota: z
      .object({
        requestsPerSecond: z.number().min(0.1).max(1_000_000),
        /** Requests allowed at once before the rate applies; defaults to one second's worth. */
        burst: z.number().int().min(1).max(1_000_000).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type KeyStoreConfig = z.infer<typeof KeyStore>;

export const HsmConfig = z
  .object({
    /** Path of the PKCS#11 module (.so). */
    module: z.string().min(1),
    /** Environment variables the module reads (e.g. SOFTHSM2_CONF), set before it is loaded. */
    moduleEnv: z.record(z.string(), z.string()).default({}),
    /** The token is found by label, never by slot index (SoftHSM renumbers slots). */
    tokenLabel: z.string().min(1).max(32),
    pin: SecretSource,
    pool: z
      .object({
        size: z.number().int().min(1).max(256).default(4),
        acquireTimeoutMs: z.number().int().min(1).max(60000).default(100),
      })
      .strict()
      .default({ size: 4, acquireTimeoutMs: 100 }),
    /** The dedicated key of the deep health check (never a customer key). */
    healthKeyLabel: z.string().min(1).default('xks-health'),
    /**
     * Who produces the GCM IV of an Encrypt (src/hsm/gcm-iv-modes.ts, docs/hsm-profiles.md):
     * 'proxy' (default): a fresh random IV from the proxy, which SoftHSM2 and most HSMs accept;
     * 'hsm-params': the HSM writes its own 12-byte IV into the mechanism parameters (AWS CloudHSM);
     * 'hsm-appended': the HSM appends its own 12- or 16-byte IV to the output (Luna in FIPS mode).
     */
    ivMode: z.enum(['proxy', 'hsm-params', 'hsm-appended']).default('proxy'),
    /**
     * How C_Encrypt and C_Decrypt are called (docs/hsm-profiles.md, "Call mode"):
     * 'sync' (default): on the event loop; fastest when a call takes microseconds (SoftHSM2);
     * 'async': on libuv's thread pool, so that calls on different sessions overlap and the proxy
     * keeps serving meanwhile: for network HSMs whose calls take milliseconds. Concurrency is
     * bounded by hsm.pool.size; `serve` sizes libuv's pool to match (src/runtime/thread-pool-size.ts).
     */
    callMode: z.enum(['sync', 'async']).default('sync'),
    /**
     * The HSM family (src/hsm/hsm-profile.ts, docs/hsm-profiles.md "Profiles"): decides what an
     * ambiguous return code means (CKR_GENERAL_ERROR on decrypt is a failed GCM tag only on
     * 'softhsm2') and which HSMs are network HSMs (a start-up warning in callMode 'sync').
     * Unset: recognised from the module's file name, else 'generic' (no vendor assumption).
     */
    profile: z.enum(['softhsm2', 'luna', 'cloudhsm', 'nshield', 'generic']).optional(),
    /**
     * hsm.callMode 'async' only: the deadline of each C_Encrypt/C_Decrypt on the thread pool, after
     * which the request gets DependencyTimeoutException (spec: KMS waits 250 ms in all); the late
     * result is discarded and its session not reused until the call has returned.
     */
    callTimeoutMs: z.number().int().min(1).max(60000).default(150),
    /**
     * While the token or module is unusable (token removed, device error), the backend tries to
     * re-initialise it in the background this often, so that service is back right after the HSM.
     */
    recoveryIntervalMs: z.number().int().min(10).max(60000).default(200),
  })
  .strict();
export type HsmConfig = z.infer<typeof HsmConfig>;

/**
 * mTLS (spec "Authentication": SHOULD support it). KMS presents CN=cks.kms.<region>.amazonaws.com
 * chained to an Amazon Trust Services CA; any other subject or chain must not get through.
 */
const ClientAuth = z
  .object({
    /** The trusted root CA(s) for client certificates (PEM). */
    caFile: z.string().min(1),
    /** Allowed subject CNs; "*" stands for one DNS label, e.g. "cks.kms.*.amazonaws.com". */
    allowedSubjects: z.array(z.string().regex(/^[A-Za-z0-9*.-]{1,253}$/, 'must be a host name, "*" for one label')).min(1),
  })
  .strict();

const Tls = z
  .object({
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    clientAuth: ClientAuth.optional(),
  })
  .strict();

export const ConfigSchema = z
  .object({
    server: z
      .object({
        host: z.string().min(1).default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8443),
        tls: Tls.optional(),
        /** Plain HTTP only when the operator asks for it (a TLS-terminating load balancer in front). */
        plainHttp: z.boolean().default(false),
        /** The body is refused before it is buffered past this many bytes. */
        maxBodyBytes: z.number().int().min(32768).max(1048576).default(65536),
        /**
         * KMS sends its small requests at once and gives up after 250 ms: a client still sending
         * headers after 2 s, or a request after 5 s, is not KMS. Node checks both every second.
         */
        headersTimeoutMs: z.number().int().min(100).max(120000).default(2000),
        requestTimeoutMs: z.number().int().min(100).max(300000).default(5000),
        /** Once the headers are in, the body must arrive within this (checked per request). */
        bodyTimeoutMs: z.number().int().min(50).max(60000).default(1000),
        /**
         * Requests whose body or signature is not checked yet, bounded apart from the capacity
         * that authenticated requests use (server.overload.maxInFlight): in total and per peer
         * address. Beyond either, a request whose body is not in at once (src/http/pre-auth.ts,
         * OVER_BOUND_GRACE_MS) gets 429 ThrottlingException and the connection closed. Per
         * process: with server.workers, each worker has these bounds.
         */
        preAuth: z
          .object({
            maxPending: z.number().int().min(1).max(100000).default(256),
            maxPendingPerPeer: z.number().int().min(1).max(100000).default(32),
          })
          .strict()
          .default({ maxPending: 256, maxPendingPerPeer: 32 }),
        keepAliveTimeoutMs: z.number().int().min(100).max(600000).default(65000),
        /**
         * Worker processes (node:cluster), each with its own HSM sessions; 1 = a single process.
         * The primary runs the admin API and aggregates metrics; see src/cluster/. 'auto' (the
         * default): one per core this process may use, container CPU quota included
         * (src/config/cpu-count.ts); on one core, a single process. Resolved when the file is read.
         */
        workers: z.union([z.number().int().min(1).max(64), z.literal('auto')]).default('auto'),
        /** Load shedding (429 ThrottlingException) before latency runs past KMS's 250 ms. */
        overload: z
          .object({
            maxEventLoopLagMs: z.number().int().min(5).max(1000).default(50),
            maxInFlight: z.number().int().min(1).max(100000).default(256),
          })
          .strict()
          .default({ maxEventLoopLagMs: 50, maxInFlight: 256 }),
      })
      .strict(),
    /** Unauthenticated load-balancer checks: on the main port, and optionally on a plain port. */
    healthEndpoints: z
      .object({
        livePath: z.string().startsWith('/').default('/healthz/live'),
        readyPath: z.string().startsWith('/').default('/healthz/ready'),
        plainPort: z.number().int().min(0).max(65535).optional(),
        plainHost: z.string().min(1).default('127.0.0.1'),
      })
      .strict()
      .default({ livePath: '/healthz/live', readyPath: '/healthz/ready', plainHost: '127.0.0.1' }),
    health: z
      .object({
        /** Spec GetHealthStatus: a cached result MUST NOT be older than one minute. */
        intervalMs: z.number().int().min(1000).max(50000).default(15000),
        /** A deep check slower than this reports DEGRADED. */
        degradedAboveMs: z.number().int().min(1).max(250).default(100),
      })
      .strict()
      .default({ intervalMs: 15000, degradedAboveMs: 100 }),
    hsm: HsmConfig,
    proxy: z
      .object({
        vendor: z.string().min(1).max(128).default('XKS Appliance'),
        model: z.string().min(1).max(128).default('XKS Appliance Proxy'),
        fleetSize: z.number().int().min(1).max(1000).default(1),
      })
      .strict()
      .default({ vendor: 'XKS Appliance', model: 'XKS Appliance Proxy', fleetSize: 1 }),
    limits: z
      .object({
        /** Spec: at least 4300 bytes MUST be accepted; beyond this, UnsupportedOperationException. */
        maxPlaintextBytes: z.number().int().min(4300).max(65536).default(4300),
        /** Spec: at least 8192 bytes MUST be accepted. */
        maxAadBytes: z.number().int().min(8192).max(65536).default(8192),
      })
      .strict()
      .default({ maxPlaintextBytes: 4300, maxAadBytes: 8192 }),
    sigv4: z
      .object({
        /** Spec Appendix A: requests more than 5 minutes off the proxy clock fail. */
        clockSkewSeconds: z.number().int().min(1).max(900).default(300),
        /** How often credentialsDir folders are re-read. */
        reloadIntervalMs: z.number().int().min(100).max(600000).default(5000),
      })
      .strict()
      .default({ clockSkewSeconds: 300, reloadIntervalMs: 5000 }),
    keyStores: z.array(KeyStore).min(1),
    log: z
      .object({
        level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
        /** The per-request JSON lines: to stdout and/or a file. */
        requestLogFile: z.string().min(1).optional(),
        requestLogStdout: z.boolean().default(true),
      })
      .strict()
      .default({ level: 'info', requestLogStdout: true }),
    /** Prometheus metrics (src/metrics/config.ts). */
    metrics: MetricsConfig.default(METRICS_DEFAULTS),
    /** The tamper-evident audit log (src/audit/config.ts). */
    audit: AuditConfig.default(AUDIT_DEFAULTS),
    /** Kill switch, allowlists and the admin API (src/control/config.ts). Absent: all off. */
    control: ControlConfig.optional(),
    /** Key versions, rotation and the GCM encryption limit (src/xks/key-versions-config.ts). */
    keyVersions: KeyVersionsConfig.default(KEY_VERSIONS_DEFAULTS),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!c.server.plainHttp && !c.server.tls) {
      ctx.addIssue({ code: 'custom', path: ['server', 'tls'], message: 'required unless server.plainHttp is true' });
    }
    if (c.server.headersTimeoutMs > c.server.requestTimeoutMs) {
      ctx.addIssue({ code: 'custom', path: ['server', 'headersTimeoutMs'], message: 'must not exceed server.requestTimeoutMs' });
    }
    if (c.server.bodyTimeoutMs > c.server.requestTimeoutMs) {
      // Node's request timeout would answer first, from under the pipeline.
      ctx.addIssue({ code: 'custom', path: ['server', 'bodyTimeoutMs'], message: 'must not exceed server.requestTimeoutMs' });
    }
    const prefixes = new Map<string, number>();
    const akids = new Map<string, string>();
    const names = new Set<string>();
    c.keyStores.forEach((ks, i) => {
      if (names.has(ks.name)) ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'name'], message: `duplicate key store name "${ks.name}"` });
      names.add(ks.name);
      const prev = prefixes.get(ks.pathPrefix);
      if (prev !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'pathPrefix'], message: `same prefix as keyStores.${prev}` });
      }
      prefixes.set(ks.pathPrefix, i);
      if (ks.credentials.length === 0 && ks.credentialsDir === undefined && !ks.fleetCredentials) {
        ctx.addIssue({ code: 'custom', path: ['keyStores', i], message: 'needs "credentials", "credentialsDir" or "fleetCredentials"' });
      }
      if (ks.fleetCredentials && c.control?.store !== 'etcd') {
        ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'fleetCredentials'], message: 'needs control.store: etcd (the fleet distributes credentials through etcd)' });
      }
      // The wrap key must serve nothing else: as an XKS key, a caller choosing the AAD could ask it to decrypt a credential.
      const wrap = c.control?.etcd?.credentialWrapKeyLabel;
      ks.keys.forEach((k, j) => {
        if (wrap !== undefined && (k.label ?? k.externalKeyId) === wrap) ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'keys', j], message: `uses the HSM key "${wrap}", which is control.etcd.credentialWrapKeyLabel: the credential wrap key serves no other purpose` });
      });
      ks.credentials.forEach((cr, j) => {
        const other = akids.get(cr.accessKeyId);
        if (other !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'credentials', j, 'accessKeyId'], message: `already used by key store "${other}": an access key id names exactly one secret` });
        }
        akids.set(cr.accessKeyId, ks.name);
      });
      const ids = new Set<string>();
      ks.keys.forEach((k, j) => {
        if (ids.has(k.externalKeyId)) ctx.addIssue({ code: 'custom', path: ['keyStores', i, 'keys', j, 'externalKeyId'], message: 'duplicate externalKeyId' });
        ids.add(k.externalKeyId);
      });
    });
    if (c.control?.etcd && c.hsm.healthKeyLabel === c.control.etcd.credentialWrapKeyLabel) {
      ctx.addIssue({ code: 'custom', path: ['hsm', 'healthKeyLabel'], message: 'must not be control.etcd.credentialWrapKeyLabel: the credential wrap key serves no other purpose' });
    }
  })
  // server.workers 'auto': one worker per core the process may use (src/config/cpu-count.ts), in
  // fleet mode too (each worker is a fleet member of its own).
  .transform((c) => ({ ...c, server: { ...c.server, workers: c.server.workers === 'auto' ? autoWorkers() : c.server.workers } }));

export type Config = z.infer<typeof ConfigSchema>;
