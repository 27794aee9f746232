/**
 * Canonical serialisation of audit records, the input of their hash: JSON with the keys of every
 * object sorted (by UTF-16 code units, as Array.prototype.sort does), no whitespace, undefined
 * members left out (undefined array items as null), strings and numbers as JSON.stringify writes
 * them. Parsing a line and serialising it again gives the same text, so a verifier recomputes the
 * hash from the parsed record and does not depend on how the line was laid out.
 */
import crypto from 'node:crypto';

const INDEX_KEY = /^(0|[1-9]\d*)$/;

export function canonicalJson(v: unknown): string {
  const sorted = sortedDeep(v);
  return sorted === NEEDS_SLOW_PATH ? slowCanonical(v) : JSON.stringify(sorted);
}

const NEEDS_SLOW_PATH = Symbol('slow');

/**
 * A copy with every object's keys inserted in sorted order, so that one JSON.stringify writes the
 * canonical form (several times faster than joining per-member strings). JavaScript enumerates
 * array-index keys ("0", "12") first whatever the insertion order, so an object with one takes
 * the member-by-member path instead.
 */
function sortedDeep(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) {
    const out: unknown[] = [];
    for (const x of v) {
      const s = x === undefined ? null : sortedDeep(x);
      if (s === NEEDS_SLOW_PATH) return s;
      out.push(s);
    }
    return out;
  }
  const obj = v as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(obj).sort()) {
    const c = k.charCodeAt(0);
    if (c >= 48 && c <= 57 && INDEX_KEY.test(k)) return NEEDS_SLOW_PATH;
    const x = obj[k];
    if (x === undefined) continue;
    const s = sortedDeep(x);
    if (s === NEEDS_SLOW_PATH) return s;
    out[k] = s;
  }
  return out;
}

function slowCanonical(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map((x) => (x === undefined ? 'null' : slowCanonical(x))).join(',') + ']';
  const obj = v as Record<string, unknown>;
  const parts: string[] = [];
  for (const k of Object.keys(obj).sort()) {
    if (obj[k] !== undefined) parts.push(JSON.stringify(k) + ':' + slowCanonical(obj[k]));
  }
  return '{' + parts.join(',') + '}';
}

/** The hash of a record: hex SHA-256 of the canonical JSON of every member except `hash`. */
export function recordHash(record: Record<string, unknown>): string {
  const { hash: _ignored, ...rest } = record;
  return sha256Hex(canonicalJson(rest));
}

export function sha256Hex(text: string): string {
  return crypto.createHash('sha256').update(text, 'utf8').digest('hex');
}

/**
 * A record as one line: its canonical JSON with `hash` appended as the last member. Writing the
 * canonical form itself means one serialisation per record on the hot path.
 */
export function sealRecord(record: Record<string, unknown>): { line: string; hash: string } {
  const canon = canonicalJson(record);
  const hash = sha256Hex(canon);
  return { line: canon === '{}' ? `{"hash":"${hash}"}` : `${canon.slice(0, -1)},"hash":"${hash}"}`, hash };
}

/** prevHash of the very first record of a stream. */
export const GENESIS_PREV_HASH = '0'.repeat(64);
