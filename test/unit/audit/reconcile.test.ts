/**
 * Reconciliation of the proxy's operations with CloudTrail's KMS events (src/audit/reconcile.ts),
 * with events in CloudTrail's documented record format (test/helpers/cloudtrail-events.ts).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readCloudTrail, toKmsEvent, type KmsEvent } from '../../../src/audit/cloudtrail';
import { principalIdentity, reconcile, type ProxyOperation } from '../../../src/audit/reconcile';
import { kmsEvent, writeCloudTrailFile } from '../../helpers/cloudtrail-events';

const KEY = 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const OTHER_KEY = 'arn:aws:kms:us-east-1:123456789012:key/99999999-12ab-34cd-56ef-1234567890ab';
const ALICE = 'arn:aws:iam::123456789012:user/Alice';
const T0 = Date.parse('2026-11-27T10:00:00Z');

let n = 0;
function op(over: Partial<ProxyOperation> = {}): ProxyOperation {
  n++;
  return { kmsRequestId: `req-${n}`, time: T0 + n * 1000, api: 'Encrypt', kmsOperation: 'Encrypt', keyStore: 'ks', externalKeyId: 'k1', kmsKeyArn: KEY, awsPrincipalArn: ALICE, source: 'audit.log', ...over };
}
function eventFor(o: ProxyOperation, over: Partial<Parameters<typeof kmsEvent>[0]> = {}): KmsEvent {
  return toKmsEvent(kmsEvent({ requestId: o.kmsRequestId, eventName: o.kmsOperation!, keyArn: o.kmsKeyArn!, principalArn: o.awsPrincipalArn!, time: new Date(o.time), ...over }), 'ct')!;
}
const exact = { slackMs: 0, from: T0, to: T0 + 3600_000 };

describe('audit reconcile: proxy operations against CloudTrail', () => {
  it('every operation with its event, and every event with its operation: exit 0', () => {
    const ops = [op(), op({ api: 'Decrypt', kmsOperation: 'Decrypt' }), op({ kmsOperation: 'GenerateDataKey' }), op({ api: 'GetKeyMetadata', kmsOperation: 'CreateKey' })];
    const r = reconcile(ops, ops.map((o) => eventFor(o)), exact);
    expect(r.exitCode).to.equal(0);
    expect(r.matched).to.equal(4);
    expect(r.cloudTrail.storeEventsInRange).to.equal(4);
  });

  it('an HSM operation with no KMS event is reported first: exit 1', () => {
    const ops = [op(), op(), op()];
    const r = reconcile(ops, [eventFor(ops[0]!), eventFor(ops[2]!)], exact);
    expect(r.exitCode).to.equal(1);
    expect(r.proxyWithoutKmsEvent.map((o) => o.kmsRequestId)).to.deep.equal([ops[1]!.kmsRequestId]);
  });

  it('a successful KMS event on a key of the store with no proxy record: exit 4', () => {
    const ops = [op()];
    const missing = eventFor(op());
    const r = reconcile(ops, [eventFor(ops[0]!), missing], exact);
    expect(r.exitCode).to.equal(4);
    expect(r.kmsEventsWithoutProxyRecord.map((e) => e.requestId)).to.deep.equal([missing.requestId]);
  });

  it('failed KMS calls, other keys and KMS operations that never reach the proxy owe no record', () => {
    const ops = [op()];
    const failed = eventFor(op(), { errorCode: 'AccessDeniedException' });
    const otherKey = eventFor(op({ kmsKeyArn: OTHER_KEY }));
    const describe = eventFor(op({ kmsOperation: 'DescribeKey' }));
    const r = reconcile(ops, [eventFor(ops[0]!), failed, otherKey, describe], exact);
    expect(r.exitCode).to.equal(0);
    expect(r.kmsEventsWithoutProxyRecord).to.deep.equal([]);
  });

  it('a key of the store that the audit log never names is found by --key-arn or the custom key store id', () => {
    const e = eventFor(op({ kmsKeyArn: OTHER_KEY }));
    expect(reconcile([op()].map((o) => o), [e], exact).kmsEventsWithoutProxyRecord).to.have.length(0);
    expect(reconcile([], [e], { ...exact, keyArns: [OTHER_KEY] }).kmsEventsWithoutProxyRecord).to.have.length(1);
    const tagged = eventFor(op({ kmsKeyArn: OTHER_KEY }), { customKeyStoreId: 'cks-1234567890abcdef0' });
    expect(reconcile([], [tagged], { ...exact, customKeyStoreIds: ['cks-1234567890abcdef0'] }).kmsEventsWithoutProxyRecord).to.have.length(1);
  });

  for (const [field, change] of [
    ['key', { keyArn: OTHER_KEY }],
    ['operation', { eventName: 'Decrypt' }],
    ['principal', { principalArn: 'arn:aws:iam::123456789012:user/Mallory' }],
  ] as const) {
    it(`a ${field} that differs between the two records: exit 3`, () => {
      const o = op();
      const r = reconcile([o], [eventFor(o, change)], exact);
      expect(r.exitCode).to.equal(3);
      expect(r.mismatches.map((m) => m.field)).to.deep.equal([field]);
    });
  }

  it('an XKS call that does not fit the KMS operation is an operation mismatch', () => {
    const o = op({ api: 'Decrypt', kmsOperation: 'Encrypt' });
    expect(reconcile([o], [eventFor(o)], exact).mismatches.map((m) => m.field)).to.deep.equal(['operation']);
  });

  it('ReEncrypt: a Decrypt and an Encrypt under one request id match one event', () => {
    const d = op({ api: 'Decrypt', kmsOperation: 'ReEncrypt' });
    const e = { ...d, api: 'Encrypt', time: d.time + 5 };
    const r = reconcile([d, e], [eventFor(d)], exact);
    expect(r.exitCode).to.equal(0);
    expect(r.matched).to.equal(2);
  });

  it('an assumed-role session and its role are the same principal; another role is not', () => {
    expect(principalIdentity('arn:aws:sts::123456789012:assumed-role/Admin/alice')).to.equal(principalIdentity('arn:aws:iam::123456789012:role/ops/Admin'));
    expect(principalIdentity('arn:aws:sts::123456789012:assumed-role/Admin/alice')).not.to.equal(principalIdentity('arn:aws:iam::123456789012:role/Other'));
    const o = op({ awsPrincipalArn: 'arn:aws:iam::123456789012:role/Admin' });
    expect(reconcile([o], [eventFor(o, { principalArn: 'arn:aws:sts::123456789012:assumed-role/Admin/s1' })], exact).exitCode).to.equal(0);
  });

  it('the default range is the overlap of both inputs less the delivery slack at each end', () => {
    const early = op({ time: T0 - 3600_000 }); // before any CloudTrail event: not judged
    const inside = op({ time: T0 + 30 * 60_000 });
    const unlogged = op({ time: T0 + 31 * 60_000 });
    const late = op({ time: T0 + 3 * 3600_000 }); // after the last CloudTrail event: not judged
    const events = [eventFor(op({ time: T0 })), eventFor(inside), eventFor(op({ time: T0 + 3600_000 }))];
    const r = reconcile([early, inside, unlogged, late], events, { slackMs: 10 * 60_000 });
    expect(r.range).to.deep.equal({ from: new Date(T0 + 10 * 60_000).toISOString(), to: new Date(T0 + 50 * 60_000).toISOString() });
    expect(r.proxyWithoutKmsEvent.map((o) => o.kmsRequestId)).to.deep.equal([unlogged.kmsRequestId]);
    expect(r.kmsEventsWithoutProxyRecord).to.deep.equal([]);
  });

  it('nothing to compare is not a success: exit 5', () => {
    expect(reconcile([op()], [], {}).exitCode).to.equal(5);
    expect(reconcile([], [], {}).exitCode).to.equal(5);
  });
});

describe('audit reconcile: reading CloudTrail files', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-ct-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads gzip Records files in a delivery tree, plain arrays, lookup-events answers and JSON Lines', () => {
    const ev = (id: string) => kmsEvent({ requestId: id, eventName: 'Encrypt', keyArn: KEY });
    writeCloudTrailFile(dir, [ev('a'), ev('b'), { eventSource: 's3.amazonaws.com', eventName: 'GetObject', requestID: 'x', eventTime: '2026-11-27T10:00:00Z' }]);
    fs.writeFileSync(path.join(dir, 'array.json'), JSON.stringify([ev('c')]));
    fs.writeFileSync(path.join(dir, 'lookup.json'), JSON.stringify({ Events: [{ EventId: '1', CloudTrailEvent: JSON.stringify(ev('d')) }] }));
    fs.writeFileSync(path.join(dir, 'lines.jsonl'), [ev('e'), ev('f')].map((e) => JSON.stringify(e)).join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'README.txt'), 'not an event file');
    const r = readCloudTrail([dir]);
    expect(r.events.map((e) => e.requestId).sort()).to.deep.equal(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(r.files).to.have.length(4);
    expect(r.skipped).to.equal(1);
    expect(r.events[0]!.keyArns).to.deep.equal([KEY]);
  });

  it('names the file that is not an event file', () => {
    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, '{"Records": [');
    expect(() => readCloudTrail([dir])).to.throw(bad);
  });

  it('CreateKey: the new key from the answer, the custom key store from the request', () => {
    const e = toKmsEvent(kmsEvent({ requestId: 'r', eventName: 'CreateKey', keyArn: KEY, customKeyStoreId: 'cks-1' }), 'x')!;
    expect(e.keyArns).to.deep.equal([KEY]);
    expect(e.customKeyStoreId).to.equal('cks-1');
  });
});
