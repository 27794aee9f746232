import { expect } from 'chai';
import { PreAuthLimiter } from '../../../src/http/pre-auth';

describe('PreAuthLimiter (requests not yet authenticated)', () => {
  it('bounds each peer address, and the other peers are unaffected', () => {
    const l = new PreAuthLimiter({ maxPending: 10, maxPendingPerPeer: 2 });
    expect(l.admit('10.0.0.1').ticket).to.not.equal(undefined);
    expect(l.admit('10.0.0.1').ticket).to.not.equal(undefined);
    expect(l.admit('10.0.0.1').refused).to.equal('2 requests from 10.0.0.1 awaiting body or authentication (max 2 per peer)');
    expect(l.admit('10.0.0.2').ticket).to.not.equal(undefined);
  });

  it('bounds the total across peers', () => {
    const l = new PreAuthLimiter({ maxPending: 3, maxPendingPerPeer: 2 });
    for (const peer of ['a', 'a', 'b']) expect(l.admit(peer).ticket).to.not.equal(undefined);
    expect(l.admit('c').refused).to.equal('3 requests awaiting body or authentication (max 3)');
  });

  it('frees a slot on release, once only, and forgets a peer with nothing pending', () => {
    const l = new PreAuthLimiter({ maxPending: 2, maxPendingPerPeer: 2 });
    const t1 = l.admit('a').ticket!;
    const t2 = l.admit('a').ticket!;
    expect(l.admit('b').refused).to.match(/max 2\)/);
    t1.release();
    t1.release(); // a second release must not free someone else's slot
    expect(l.state()).to.deep.equal({ pending: 1, peers: 1 });
    const t3 = l.admit('b').ticket!;
    expect(l.admit('c').refused).to.match(/max 2\)/);
    t2.release();
    t3.release();
    expect(l.state()).to.deep.equal({ pending: 0, peers: 0 });
  });

  it('counts requests without a known address under one key', () => {
    const l = new PreAuthLimiter({ maxPending: 10, maxPendingPerPeer: 1 });
    expect(l.admit(undefined).ticket).to.not.equal(undefined);
    expect(l.admit(undefined).refused).to.match(/from unknown/);
  });
});
