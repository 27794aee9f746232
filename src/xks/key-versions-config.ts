/**
 * Key versions and rotation (section `keyVersions`, and `keyStores[].keys[].rotation` for one key).
 * See docs/runbook-key-rotation.md.
 */
import { z } from 'zod';

/** NIST SP 800-38D section 8.3: with random 96-bit IVs, at most 2^32 encryptions per key. */
export const GCM_RANDOM_IV_LIMIT = 2 ** 32;

/** What may differ per key; unset fields come from the `keyVersions` section. */
export const KeyRotation = z
  .object({
    /** Generate a new version when the current one is this many days old. */
    everyDays: z.number().int().min(1).max(3650).optional(),
    /** Generate a new version when the current one has encrypted this many times. */
    atEncryptions: z.number().int().min(1).max(GCM_RANDOM_IV_LIMIT).optional(),
  })
  .strict();
export type KeyRotation = z.infer<typeof KeyRotation>;

export const KeyVersionsConfig = z
  .object({
    /**
     * Where encryption and decrypt counts are kept (one ledger file per key, shared by the
     * workers). Absent: counts in memory only, lost on restart (the proxy warns).
     */
    usageDir: z.string().min(1).optional(),
    /**
     * Encryptions reserved per ledger write (in fleet mode, per etcd transaction on the fleet's
     * count): what a crash can lose (over-count), per process; with a ledger file up to two blocks,
     * since the next one is reserved ahead once a quarter of the current is left.
     */
    reserveBlock: z.number().int().min(1).max(1_000_000).default(10_000),
    /** How often decrypt counts are written to the ledger. */
    flushIntervalMs: z.number().int().min(100).max(600_000).default(5_000),
    /** How often the versions in the HSM are read again (a rotation by another proxy shows within it). */
    rescanIntervalMs: z.number().int().min(100).max(3_600_000).default(30_000),
    /**
     * May this proxy generate new versions itself (rotation.atEncryptions / everyDays)? Turn it on
     * for one proxy of a fleet or for all (a rotation is a compare-and-set on the HSM's versions).
     */
    autoRotate: z.boolean().default(false),
    /** Default rotation triggers for every key (a key's own `rotation` overrides them). */
    rotation: KeyRotation.default({ atEncryptions: 2 ** 30 }),
    /**
     * Encryptions one version never exceeds: at this count Encrypt fails (InvalidStateException)
     * unless a new version can be generated. In fleet mode (control.store etcd) the limit is the
     * fleet's total; in file mode each proxy's own, so keep a margin for independent proxies.
     */
    encryptionLimit: z.number().int().min(1).max(GCM_RANDOM_IV_LIMIT).default(2 ** 32 - 2 ** 28),
    /**
     * Retiring (destroying) a version is refused while its last decrypt counted here is less than
     * this many days old, unless the quorum approves it with forceRecentUse (`keys retire
     * --force-recent-use`). 0: no quiet period. Needs usageDir: without it the last use is unknown
     * and every retirement needs forceRecentUse.
     */
    retireQuietDays: z.number().int().min(0).max(3650).default(30),
  })
  .strict();
export type KeyVersionsConfig = z.infer<typeof KeyVersionsConfig>;

export const KEY_VERSIONS_DEFAULTS: KeyVersionsConfig = KeyVersionsConfig.parse({});
