/**
 * control.store / control.etcd validation: the settings that keep fleet mode's guarantees (a
 * member cut off from etcd fails closed before its lease lets an engage stop waiting for it).
 */
import { expect } from 'chai';
import { ControlConfig } from '../../../src/control/config';

const etcd = { endpoints: ['http://127.0.0.1:2379'] };
const issues = (raw: unknown): string[] => {
  const r = ControlConfig.safeParse(raw);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

describe('control store configuration', () => {
  it('defaults to the file store, which needs stateDir', () => {
    const r = ControlConfig.parse({ stateDir: '/s' });
    expect(r.store).to.equal('file');
    expect(issues({})).to.deep.equal(['stateDir: required with store: file']);
  });

  it('etcd: needs control.etcd, not stateDir; defaults keep the lease longer than the staleness bound', () => {
    expect(issues({ store: 'etcd' })).to.deep.equal(['etcd: required with store: etcd']);
    const r = ControlConfig.parse({ store: 'etcd', etcd });
    expect(r.etcd!.maxStalenessMs).to.equal(3000);
    expect(r.etcd!.keepLastKnownMs).to.equal(0);
    expect(r.etcd!.leaseTtlSeconds * 1000).to.be.greaterThan(r.etcd!.maxStalenessMs);
  });

  it('refuses a lease that would expire before a cut-off member fails closed', () => {
    expect(issues({ store: 'etcd', etcd: { ...etcd, maxStalenessMs: 5000, leaseTtlSeconds: 5 } })[0]).to.match(/^etcd\.leaseTtlSeconds: must be longer than maxStalenessMs \+ keepLastKnownMs/);
    expect(issues({ store: 'etcd', etcd: { ...etcd, keepLastKnownMs: 60_000 } })[0]).to.match(/^etcd\.leaseTtlSeconds/);
    expect(issues({ store: 'etcd', etcd: { ...etcd, keepLastKnownMs: 60_000, leaseTtlSeconds: 70 } })).to.deep.equal([]);
  });

  it('refuses endpoints that are not http(s) URLs, and a client certificate without its key', () => {
    expect(issues({ store: 'etcd', etcd: { endpoints: ['127.0.0.1:2379'] } })[0]).to.match(/^etcd\.endpoints\.0: an etcd client URL/);
    expect(issues({ store: 'etcd', etcd: { ...etcd, tls: { caFile: '/ca', certFile: '/c' } } })).to.deep.equal(['etcd.tls: certFile and keyFile go together']);
  });
});
