/**
 * `xks-proxy audit reconcile`: the proxy's audit log against KMS's own record in CloudTrail.
 *
 * KMS puts the id of the KMS API call into every XKS request (requestMetadata.kmsRequestId, spec
 * "requestMetadata"); CloudTrail records the same id as the event's `requestID`. Joining the two on
 * that id answers a sovereignty auditor's questions:
 *   1. proxy-only   the proxy used an HSM key (Encrypt, Decrypt, GetKeyMetadata answered 200) for
 *                   a request id that KMS never logged. Either CloudTrail is incomplete for the
 *                   range, or something that is not KMS holds valid SigV4 credentials: the finding
 *                   that matters most.
 *   2. mismatch     both sides know the request id, but the key, the KMS operation or the caller
 *                   differ.
 *   3. kms-only     KMS logged a successful call on a key of this store that needs the proxy, and
 *                   the proxy has no record of it (a gap in the audit log, or another proxy).
 *
 * One KMS call may reach the proxy more than once (ReEncrypt between two keys of the store is a
 * Decrypt and an Encrypt under one id; KMS may retry), so one event matches any number of records.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { KmsEvent } from './cloudtrail';

/** An XKS call as the audit log recorded it (the fields reconciliation reads). */
export interface ProxyOperation {
  kmsRequestId: string;
  /** Epoch milliseconds of the record's time. */
  time: number;
  api: string;
  kmsOperation?: string | undefined;
  keyStore?: string | undefined;
  externalKeyId?: string | undefined;
  kmsKeyArn?: string | undefined;
  awsPrincipalArn?: string | undefined;
  source: string;
}

/**
 * The XKS API each KMS operation calls (KMS developer guide, external key stores: every
 * cryptographic operation with an XKS key goes through the proxy; CreateKey asks for the key's
 * metadata). KMS operations outside this table never reach the proxy for a key.
 */
export const XKS_CALLS_BY_KMS_OPERATION: Readonly<Record<string, readonly string[]>> = {
  Encrypt: ['Encrypt'],
  GenerateDataKey: ['Encrypt'],
  GenerateDataKeyWithoutPlaintext: ['Encrypt'],
  GenerateDataKeyPair: ['Encrypt'],
  GenerateDataKeyPairWithoutPlaintext: ['Encrypt'],
  Decrypt: ['Decrypt'],
  ReEncrypt: ['Decrypt', 'Encrypt'],
  CreateKey: ['GetKeyMetadata'],
};

/** XKS APIs that use a customer key in the HSM (GetHealthStatus uses the proxy's own health key). */
const KEY_APIS = new Set(['Encrypt', 'Decrypt', 'GetKeyMetadata']);

export interface ReconcileOptions {
  /** Inclusive range, epoch ms; default: where the audit log and the CloudTrail events overlap. */
  from?: number | undefined;
  to?: number | undefined;
  /** Left out at both ends of the default range, for CloudTrail's delivery delay (default 15 min). */
  slackMs?: number | undefined;
  /** KMS key ARNs of this store, besides those the audit log names. */
  keyArns?: readonly string[] | undefined;
  /** Custom key store ids (cks-...) of this proxy: events that CloudTrail tags with one belong to it. */
  customKeyStoreIds?: readonly string[] | undefined;
}

export interface Mismatch {
  kmsRequestId: string;
  field: 'key' | 'operation' | 'principal';
  proxy: string | undefined;
  cloudTrail: string | undefined;
  time: string;
}

export interface ReconcileReport {
  /**
   * 0 reconciled; 1 proxy operations without a KMS event; 3 mismatches; 4 KMS events without a
   * proxy record; 5 nothing to compare (no overlap in time, or one side empty).
   */
  exitCode: 0 | 1 | 3 | 4 | 5;
  range: { from: string | null; to: string | null };
  proxy: { operationsInRange: number };
  cloudTrail: { kmsEvents: number; storeEventsInRange: number };
  matched: number;
  proxyWithoutKmsEvent: Array<Omit<ProxyOperation, 'time'> & { time: string }>;
  mismatches: Mismatch[];
  kmsEventsWithoutProxyRecord: Array<Omit<KmsEvent, 'time'> & { time: string }>;
  warnings: string[];
}

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * The identity behind a principal ARN, so that an assumed-role session (what CloudTrail records
 * for a role's caller) and the role's own ARN compare equal.
 */
export function principalIdentity(arn: string): string {
  const assumed = /^arn:([^:]+):sts::(\d+):assumed-role\/([^/]+)\/.+$/.exec(arn);
  if (assumed) return `role:${assumed[1]}:${assumed[2]}:${assumed[3]}`;
  const role = /^arn:([^:]+):iam::(\d+):role\/(?:.*\/)?([^/]+)$/.exec(arn);
  if (role) return `role:${role[1]}:${role[2]}:${role[3]}`;
  return arn;
}

function storeEvent(ev: KmsEvent, keyArns: ReadonlySet<string>, storeIds: ReadonlySet<string>): boolean {
  if (!(ev.eventName in XKS_CALLS_BY_KMS_OPERATION)) return false;
  return ev.keyArns.some((k) => keyArns.has(k)) || (ev.customKeyStoreId !== undefined && storeIds.has(ev.customKeyStoreId));
}

function compare(op: ProxyOperation, ev: KmsEvent, out: Mismatch[]): void {
  const at = iso(op.time);
  if (op.kmsKeyArn && ev.keyArns.length > 0 && !ev.keyArns.includes(op.kmsKeyArn)) {
    out.push({ kmsRequestId: op.kmsRequestId, field: 'key', proxy: op.kmsKeyArn, cloudTrail: ev.keyArns.join(' '), time: at });
  }
  const expected = XKS_CALLS_BY_KMS_OPERATION[ev.eventName];
  if (op.kmsOperation !== ev.eventName || (expected && !expected.includes(op.api))) {
    out.push({ kmsRequestId: op.kmsRequestId, field: 'operation', proxy: `${op.kmsOperation ?? '-'} (XKS ${op.api})`, cloudTrail: ev.eventName, time: at });
  }
  if (op.awsPrincipalArn && ev.principalArn && principalIdentity(op.awsPrincipalArn) !== principalIdentity(ev.principalArn)) {
    out.push({ kmsRequestId: op.kmsRequestId, field: 'principal', proxy: op.awsPrincipalArn, cloudTrail: ev.principalArn, time: at });
  }
}

export function reconcile(ops: readonly ProxyOperation[], events: readonly KmsEvent[], opts: ReconcileOptions = {}): ReconcileReport {
  const slack = opts.slackMs ?? 15 * 60_000;
  const warnings: string[] = [];
  const keyOps = ops.filter((o) => KEY_APIS.has(o.api));
  const keyArns = new Set<string>([...(opts.keyArns ?? []), ...keyOps.flatMap((o) => (o.kmsKeyArn ? [o.kmsKeyArn] : []))]);
  const storeIds = new Set(opts.customKeyStoreIds ?? []);

  // Default range: where both sides have records, so that neither is blamed for the other's edge.
  const span = (ts: number[]) => (ts.length ? { min: Math.min(...ts), max: Math.max(...ts) } : undefined);
  const opSpan = span(keyOps.map((o) => o.time));
  const evSpan = span(events.map((e) => e.time));
  let from = opts.from;
  let to = opts.to;
  // CloudTrail delivers events in files some minutes after the call, not strictly in order: the
  // events of the first and last minutes of the files given may sit in files not given. So the
  // default range leaves `slack` out at both ends of the overlap.
  if (from === undefined) from = opSpan && evSpan ? Math.max(opSpan.min, evSpan.min) + slack : undefined;
  if (to === undefined) to = opSpan && evSpan ? Math.min(opSpan.max, evSpan.max) - slack : undefined;
  if (!opSpan) warnings.push('the audit log has no Encrypt, Decrypt or GetKeyMetadata record');
  if (!evSpan) warnings.push('the CloudTrail input has no KMS event');
  if (from !== undefined && to !== undefined && from > to) warnings.push('the audit log and the CloudTrail events do not overlap in time (less the delivery slack at both ends): nothing could be compared');
  const inRange = (t: number) => from !== undefined && to !== undefined && t >= from && t <= to;

  const eventsById = new Map<string, KmsEvent[]>();
  for (const ev of events) {
    const list = eventsById.get(ev.requestId) ?? [];
    list.push(ev);
    eventsById.set(ev.requestId, list);
  }
  const opIds = new Set(keyOps.map((o) => o.kmsRequestId));

  const report: ReconcileReport = {
    exitCode: 0,
    range: { from: from === undefined ? null : iso(from), to: to === undefined ? null : iso(to) },
    proxy: { operationsInRange: 0 },
    cloudTrail: { kmsEvents: events.length, storeEventsInRange: 0 },
    matched: 0,
    proxyWithoutKmsEvent: [],
    mismatches: [],
    kmsEventsWithoutProxyRecord: [],
    warnings,
  };

  for (const op of keyOps) {
    if (!inRange(op.time)) continue;
    report.proxy.operationsInRange++;
    const evs = eventsById.get(op.kmsRequestId);
    if (!evs) {
      report.proxyWithoutKmsEvent.push({ ...op, time: iso(op.time) });
      continue;
    }
    report.matched++;
    // Several events under one id (rare): compare with the one that fits best.
    const best = evs.find((e) => e.eventName === op.kmsOperation) ?? evs[0]!;
    compare(op, best, report.mismatches);
  }

  for (const ev of events) {
    if (!storeEvent(ev, keyArns, storeIds) || !inRange(ev.time)) continue;
    report.cloudTrail.storeEventsInRange++;
    // A failed KMS call may have stopped before the proxy (IAM, key state): no record is owed.
    if (ev.errorCode || opIds.has(ev.requestId)) continue;
    report.kmsEventsWithoutProxyRecord.push({ ...ev, time: iso(ev.time) });
  }

  const compared = from !== undefined && to !== undefined && from <= to;
  report.exitCode = report.proxyWithoutKmsEvent.length ? 1 : report.mismatches.length ? 3 : report.kmsEventsWithoutProxyRecord.length ? 4 : compared ? 0 : 5;
  return report;
}

/** Audit files under a path: a file, or a folder's *.log files and its workers' (worker-N/). */
export function auditLogFiles(p: string): string[] {
  if (!fs.statSync(p).isDirectory()) return [p];
  const out: string[] = [];
  for (const name of fs.readdirSync(p).sort()) {
    const full = path.join(p, name);
    const st = fs.statSync(full);
    if (st.isDirectory() && /^worker-\d+$/.test(name)) out.push(...auditLogFiles(full));
    else if (st.isFile() && name.endsWith('.log')) out.push(full);
  }
  return out;
}

/** The XKS calls recorded in audit files (type "xks" records that the proxy answered with 200). */
export function readProxyOperations(files: readonly string[]): ProxyOperation[] {
  const ops: ProxyOperation[] = [];
  for (const file of files) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      if (!line.includes('"xks"')) continue;
      let r: Record<string, unknown>;
      try {
        r = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // a torn last line: `audit verify` reports it
      }
      if (r.type !== 'xks' || r.outcome !== 'ok' || typeof r.kmsRequestId !== 'string' || typeof r.time !== 'string') continue;
      const s = (k: string) => (typeof r[k] === 'string' ? (r[k] as string) : undefined);
      ops.push({
        kmsRequestId: r.kmsRequestId,
        time: Date.parse(r.time),
        api: s('api') ?? 'Unknown',
        kmsOperation: s('kmsOperation'),
        keyStore: s('keyStore'),
        externalKeyId: s('externalKeyId'),
        kmsKeyArn: s('kmsKeyArn'),
        awsPrincipalArn: s('awsPrincipalArn'),
        source: file,
      });
    }
  }
  return ops;
}

export function formatReconcileReport(r: ReconcileReport): string {
  const lines = [
    `range: ${r.range.from ?? '-'} .. ${r.range.to ?? '-'}`,
    `proxy HSM operations in range: ${r.proxy.operationsInRange}, matched to a KMS event: ${r.matched}`,
    `KMS events read: ${r.cloudTrail.kmsEvents}, on this store's keys in range: ${r.cloudTrail.storeEventsInRange}`,
  ];
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  const section = (title: string, rows: string[]) => {
    if (rows.length) lines.push('', `${title} (${rows.length}):`, ...rows.slice(0, 200).map((x) => `  ${x}`), ...(rows.length > 200 ? [`  ... ${rows.length - 200} more (use --json)`] : []));
  };
  section('PROXY OPERATIONS WITH NO KMS EVENT', r.proxyWithoutKmsEvent.map((o) => `${o.time} ${o.kmsRequestId} ${o.api} (${o.kmsOperation ?? '-'}) key store ${o.keyStore ?? '-'} key ${o.externalKeyId ?? '-'} principal ${o.awsPrincipalArn ?? '-'}`));
  section('MISMATCHES', r.mismatches.map((m) => `${m.time} ${m.kmsRequestId} ${m.field}: proxy ${m.proxy ?? '-'} / CloudTrail ${m.cloudTrail ?? '-'}`));
  section('KMS EVENTS WITH NO PROXY RECORD', r.kmsEventsWithoutProxyRecord.map((e) => `${e.time} ${e.requestId} ${e.eventName} key ${e.keyArns.join(' ') || '-'} principal ${e.principalArn ?? '-'}`));
  const verdict = { 0: 'reconciled: every HSM operation has its KMS event and every KMS event its proxy record', 5: 'nothing compared (exit 5)' } as Record<number, string>;
  lines.push('', verdict[r.exitCode] ?? `NOT reconciled (exit ${r.exitCode})`);
  return lines.join('\n');
}
