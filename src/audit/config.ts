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
    /** The active file is rotated once it grows past this many bytes. */
    maxFileBytes: z.number().int().min(4096).max(1024 ** 4).default(100 * 1024 * 1024),
  })
  .strict()
  .refine((a) => a.file === undefined || a.signingKeyFile !== undefined, {
    message: 'audit.signingKeyFile is required when audit.file is set (create one with: xks-proxy audit keygen)',
    path: ['signingKeyFile'],
  });
export type AuditConfig = z.infer<typeof AuditConfig>;

export const AUDIT_DEFAULTS: AuditConfig = { stdout: false, checkpointIntervalSeconds: 300, maxFileBytes: 100 * 1024 * 1024 };
