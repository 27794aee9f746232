/**
 * One XKS request as the request log and the audit log record it (spec "Logging"), and the
 * allow-list of its members that either log writes. The lowest layer both logs build on: built from
 * named fields, never by copying a request, so no plaintext, ciphertext, AAD, PIN, secret,
 * signature or Authorization header can reach a record.
 */

export interface RequestRecord {
  time: string;
  api: string;
  keyStore?: string | undefined;
  externalKeyId?: string | undefined;
  kmsRequestId?: string | undefined;
  kmsOperation?: string | undefined;
  awsPrincipalArn?: string | undefined;
  kmsKeyArn?: string | undefined;
  kmsViaService?: string | undefined;
  awsSourceVpc?: string | undefined;
  awsSourceVpce?: string | undefined;
  accessKeyId?: string | undefined;
  outcome: 'ok' | 'error';
  errorName?: string | undefined;
  /** The allowlist statement that denied the request (spec "Authorization"). */
  policyStatement?: string | undefined;
  /** The allowlist statement that allowed it. */
  allowedBy?: string | undefined;
  /** Log-safe internal reason of an error (e.g. why SigV4 failed), in words. */
  reason?: string | undefined;
  /** The same as a stable code (XksError.reason, e.g. "sigv4.clock_skew"): what metrics and tools read. */
  reasonCode?: string | undefined;
  status: number;
  latencyMs: number;
  hsmMs?: number | undefined;
  /** 'aws-sample': a Decrypt that needed the AWS sample proxy's AAD layout (keyStores[].compatibility). */
  aadLayout?: 'aws-sample' | undefined;
}

/** Caller-controlled strings are cut so that one request cannot flood the log. */
export const MAX_FIELD = 2048;

export function clip(v: string | undefined): string | undefined {
  return v === undefined || v.length <= MAX_FIELD ? v : v.slice(0, MAX_FIELD) + '...';
}

/** The members of an "xks" audit record (besides seq, id, time, type, prevHash, hash). */
export function xksFields(r: Readonly<RequestRecord>): Record<string, unknown> {
  return {
    kmsRequestId: clip(r.kmsRequestId),
    keyStore: r.keyStore,
    externalKeyId: clip(r.externalKeyId),
    api: r.api,
    kmsOperation: clip(r.kmsOperation),
    awsPrincipalArn: clip(r.awsPrincipalArn),
    kmsKeyArn: clip(r.kmsKeyArn),
    kmsViaService: clip(r.kmsViaService),
    awsSourceVpc: clip(r.awsSourceVpc),
    awsSourceVpce: clip(r.awsSourceVpce),
    accessKeyId: r.accessKeyId,
    outcome: r.outcome,
    status: r.status,
    errorName: r.errorName,
    reason: clip(r.reason),
    reasonCode: r.reasonCode,
    policyStatement: clip(r.policyStatement),
    allowedBy: clip(r.allowedBy),
    latencyMs: r.latencyMs,
    hsmMs: r.hsmMs,
    aadLayout: r.aadLayout,
  };
}

