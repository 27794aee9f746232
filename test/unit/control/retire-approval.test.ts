/**
 * The quorum rule for retiring a key version (state-model.ts applyRetireApproval), with a clock:
 * distinct operators, inside the approval window, for the same retirement.
 */
import { expect } from 'chai';
import { applyRetireApproval, emptyState, type Actor } from '../../../src/control/state-model';

const op = (operator: string): Actor => ({ operator, via: 'admin-api' });
const WINDOW = 60_000;
const v1 = { keyLabel: 'k', version: 1, forceRecentUse: false };

describe('retire approvals (two-person rule)', () => {
  it('an approval older than the window does not count: the quorum needs two within it', () => {
    const a = applyRetireApproval(emptyState(), v1, op('alice'), 'r', 1_000, 2, WINDOW);
    expect(a.approved).to.equal(false);
    const late = applyRetireApproval(a.state, v1, op('bob'), 'r', 1_000 + WINDOW + 1, 2, WINDOW);
    expect(late.approved).to.equal(false);
    expect(late.approvers).to.deep.equal(['bob']);
    const inTime = applyRetireApproval(late.state, v1, op('alice'), 'r', 1_000 + WINDOW + 2, 2, WINDOW);
    expect(inTime.approved).to.equal(true);
    expect(inTime.approvers).to.have.members(['alice', 'bob']);
    expect(inTime.state.retireApprovals).to.deep.equal([]);
    expect(inTime.state.history.map((e) => e.action)).to.deep.equal(['retire-approve', 'retire-approve', 'retire-approve', 'retire-approved']);
  });

  it('approvals of another version, or with another forceRecentUse, do not add up', () => {
    let s = applyRetireApproval(emptyState(), v1, op('alice'), 'r', 0, 2, WINDOW).state;
    const other = applyRetireApproval(s, { ...v1, version: 2 }, op('bob'), 'r', 1, 2, WINDOW);
    expect(other.approved).to.equal(false);
    s = other.state;
    const forced = applyRetireApproval(s, { ...v1, forceRecentUse: true }, op('carol'), 'r', 2, 2, WINDOW);
    expect(forced.approved).to.equal(false);
    expect(forced.approvers).to.deep.equal(['carol']);
    // A future-dated approval (clock skew in a fleet) is not counted either.
    const skew = applyRetireApproval(emptyState(), v1, op('alice'), 'r', 10_000, 2, WINDOW);
    expect(applyRetireApproval(skew.state, v1, op('bob'), 'r', 5_000, 2, WINDOW).approved).to.equal(false);
  });
});
