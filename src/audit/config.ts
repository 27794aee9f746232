/**
 * Audit log configuration (section `audit`). When `file` is set the tamper-evident audit log
 * replaces the plain request log (log.requestLogFile / log.requestLogStdout are then ignored).
 */
import { z } from 'zod';

export const AuditConfig = z
  .object({
    /** The active audit file; rotated files are written next to it. Absent: no audit log. */
    file: z.string().min(1).optional(),
    /** Also write every audit line to stdout (JSON lines, the same bytes as in the file). */
    stdout: z.boolean().default(false),
    /** Private JWK (Ed25519 or P-256) that signs checkpoints; `xks-proxy audit keygen` makes one. */
    signingKeyFile: z.string().min(1).optional(),
    /** A signed checkpoint is written at this interval (and at rotation and shutdown). */
    checkpointIntervalSeconds: z.number().int().min(1).max(86400).default(300),
    /**
     * When a request's record counts as kept, before the request is answered (docs/observability.md):
     * "write" once write() returned (survives a killed process, not a power loss), "fsync" once
     * fdatasync returned too (survives a power loss; one disk flush per batch of requests).
     */
    durability: z.enum(['write', 'fsync']).default('write'),
    /**
     * Every signed checkpoint line is also appended here (fsynced), for the auditor to keep or ship
     * off the machine: `audit verify --witness FILE` then detects a deleted newest file or a file cut
     * short after a checkpoint. Put it on other storage than audit.file.
     */
    witnessFile: z.string().min(1).optional(),
    /** The active file is rotated once it grows past this many bytes. */
    maxFileBytes: z.number().int().min(4096).max(1024 ** 4).default(100 * 1024 * 1024),
  })
  .strict()
  .refine((a) => a.file === undefined || a.signingKeyFile !== undefined, {
    message: 'audit.signingKeyFile is required when audit.file is set (create one with: xks-proxy audit keygen)',
    path: ['signingKeyFile'],
  });
export type AuditConfig = z.infer<typeof AuditConfig>;

export const AUDIT_DEFAULTS: AuditConfig = { stdout: false, durability: 'write', checkpointIntervalSeconds: 300, maxFileBytes: 100 * 1024 * 1024 };
