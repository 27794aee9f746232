/**
 * Reading AWS CloudTrail event files for `xks-proxy audit reconcile`.
 *
 * CloudTrail delivers log files as JSON objects `{"Records": [event, ...]}`, usually gzip-compressed
 * (`*.json.gz`), in a folder tree by account, region and date. We also accept what operators export
 * by other means: a plain JSON array of events, the `{"Events": [{"CloudTrailEvent": "<json>"}]}`
 * shape of a lookup-events answer, and one event per line (JSON Lines). Only the fields the
 * reconciliation compares are kept; everything else in an event is ignored.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

/** The part of a CloudTrail event that reconciliation reads. */
export interface KmsEvent {
  /** CloudTrail's `requestID`: the same id KMS sends to the proxy as requestMetadata.kmsRequestId. */
  requestId: string;
  eventId?: string | undefined;
  eventName: string;
  /** Epoch milliseconds of `eventTime`. */
  time: number;
  /** The caller (`userIdentity.arn`), absent for some AWS service callers. */
  principalArn?: string | undefined;
  principalType?: string | undefined;
  /** KMS key ARNs the event names (`resources`, and key ids in `requestParameters` that are ARNs). */
  keyArns: string[];
  /** `additionalEventData.customKeyStoreId`, when CloudTrail records it. */
  customKeyStoreId?: string | undefined;
  /** Set when the KMS call failed (CloudTrail `errorCode`). */
  errorCode?: string | undefined;
  /** Where it was read from, for the report. */
  source: string;
}

export interface CloudTrailReadResult {
  events: KmsEvent[];
  files: string[];
  /** Events that were not KMS events, or lacked a requestID or a time. */
  skipped: number;
}

const KEY_PARAMS = ['keyId', 'sourceKeyId', 'destinationKeyId'] as const;

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** One raw CloudTrail event to a KmsEvent, or undefined when it is not a usable KMS event. */
export function toKmsEvent(raw: unknown, source: string): KmsEvent | undefined {
  const e = obj(raw);
  if (!e || e.eventSource !== 'kms.amazonaws.com') return undefined;
  const requestId = str(e.requestID);
  const eventName = str(e.eventName);
  const time = Date.parse(str(e.eventTime) ?? '');
  if (!requestId || !eventName || Number.isNaN(time)) return undefined;
  const keyArns = new Set<string>();
  for (const r of Array.isArray(e.resources) ? e.resources : []) {
    const arn = str(obj(r)?.ARN);
    if (arn && arn.startsWith('arn:') && arn.includes(':key/')) keyArns.add(arn);
  }
  const params = obj(e.requestParameters);
  for (const p of KEY_PARAMS) {
    const v = str(params?.[p]);
    if (v && v.startsWith('arn:') && v.includes(':key/')) keyArns.add(v);
  }
  // CreateKey names the new key only in its answer.
  const created = obj(obj(e.responseElements)?.keyMetadata);
  const createdArn = str(created?.arn);
  if (createdArn) keyArns.add(createdArn);
  const who = obj(e.userIdentity);
  return {
    requestId,
    eventId: str(e.eventID),
    eventName,
    time,
    principalArn: str(who?.arn),
    principalType: str(who?.type),
    keyArns: [...keyArns],
    customKeyStoreId: str(obj(e.additionalEventData)?.customKeyStoreId) ?? str(params?.customKeyStoreId) ?? str(created?.customKeyStoreId),
    errorCode: str(e.errorCode),
    source,
  };
}

/** The raw events in one file's text, whatever of the accepted shapes it has. */
export function rawEventsOf(text: string): unknown[] {
  const trimmed = text.trim();
  if (trimmed.length === 0) return [];
  let whole: unknown;
  try {
    whole = JSON.parse(trimmed);
  } catch {
    // JSON Lines: one event per line.
    return trimmed.split('\n').filter((l) => l.trim().length > 0).map((l) => JSON.parse(l) as unknown);
  }
  if (Array.isArray(whole)) return whole;
  const o = obj(whole);
  if (o && Array.isArray(o.Records)) return o.Records;
  if (o && Array.isArray(o.Events)) {
    return o.Events.map((ev) => {
      const inner = obj(ev)?.CloudTrailEvent;
      return typeof inner === 'string' ? (JSON.parse(inner) as unknown) : inner;
    });
  }
  return [whole];
}

/** Event files under a path: the file itself, or every *.json / *.json.gz / *.jsonl below a folder. */
export function cloudTrailFiles(p: string): string[] {
  if (!fs.statSync(p).isDirectory()) return [p];
  const out: string[] = [];
  for (const name of fs.readdirSync(p).sort()) {
    const full = path.join(p, name);
    if (fs.statSync(full).isDirectory()) out.push(...cloudTrailFiles(full));
    else if (/\.(json|jsonl)(\.gz)?$/.test(name)) out.push(full);
  }
  return out;
}

function readText(file: string): string {
  const buf = fs.readFileSync(file);
  // gzip magic number: CloudTrail's own delivery is compressed whatever the file is called.
  return (buf.length > 2 && buf[0] === 0x1f && buf[1] === 0x8b ? zlib.gunzipSync(buf) : buf).toString('utf8');
}

/** Every KMS event in the given files and folders. Throws with the file named when one cannot be read. */
export function readCloudTrail(inputs: readonly string[]): CloudTrailReadResult {
  const result: CloudTrailReadResult = { events: [], files: [], skipped: 0 };
  for (const input of inputs) {
    for (const file of cloudTrailFiles(input)) {
      let raws: unknown[];
      try {
        raws = rawEventsOf(readText(file));
      } catch (e) {
        throw new Error(`${file}: not a CloudTrail event file (${(e as Error).message})`);
      }
      result.files.push(file);
      for (const raw of raws) {
        const ev = toKmsEvent(raw, file);
        if (ev) result.events.push(ev);
        else result.skipped++;
      }
    }
  }
  return result;
}
