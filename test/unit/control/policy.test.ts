/**
 * Allowlist policies (spec "Authorization"): validation before replacement, and evaluation tables.
 */
import { expect } from 'chai';
import { CompiledPolicy, DEFAULT_ALLOW, DEFAULT_DENY, compilePattern, isTightening, validatePolicy, type PolicyDoc, type PolicyRequest } from '../../../src/control/policy';
import type { XksApi } from '../../../src/xks/requests';

const ALICE = 'arn:aws:iam::111122223333:user/Alice';
const ROLE = 'arn:aws:sts::111122223333:assumed-role/AppRole/session-1';
const OTHER = 'arn:aws:iam::999988887777:user/Mallory';
const KEY_EU = 'arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const KEY_US = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';

function req(over: Partial<PolicyRequest['metadata']> & { api?: XksApi; key?: string } = {}): PolicyRequest {
  const { api = 'Encrypt', key = 'k1', ...md } = over;
  return { api, externalKeyId: key, metadata: { kmsRequestId: 'r', kmsOperation: 'Encrypt', awsPrincipalArn: ALICE, kmsKeyArn: KEY_EU, ...md } };
}

function policy(raw: unknown): CompiledPolicy {
  const v = validatePolicy(raw);
  if (!v.ok) throw new Error(v.errors.join('; '));
  return new CompiledPolicy(v.policy);
}

describe('allowlist policy', () => {
  describe('validation', () => {
    const bad: [string, unknown, RegExp][] = [
      ['missing defaultDecision', { statements: [] }, /defaultDecision/],
      ['unknown defaultDecision', { defaultDecision: 'maybe' }, /defaultDecision/],
      ['statement without sid', { defaultDecision: 'deny', statements: [{ effect: 'allow' }] }, /statements\.0\.sid/],
      ['duplicate sid', { defaultDecision: 'deny', statements: [{ sid: 'a', effect: 'allow' }, { sid: 'a', effect: 'deny' }] }, /statements\.1\.sid: duplicate sid "a"/],
      ['bad effect', { defaultDecision: 'deny', statements: [{ sid: 'a', effect: 'permit' }] }, /statements\.0\.effect/],
      ['misspelt condition', { defaultDecision: 'deny', statements: [{ sid: 'a', effect: 'allow', conditions: { kmsOpration: ['Encrypt'] } }] }, /statements\.0\.conditions/],
      ['empty pattern list', { defaultDecision: 'deny', statements: [{ sid: 'a', effect: 'allow', conditions: { kmsOperation: [] } }] }, /kmsOperation/],
      ['empty pattern', { defaultDecision: 'deny', statements: [{ sid: 'a', effect: 'allow', keys: [''] }] }, /keys\.0/],
      ['unknown top-level field', { defaultDecision: 'deny', version: 2 }, /version|Unrecognized/i],
      ['sid with spaces', { defaultDecision: 'deny', statements: [{ sid: 'a b', effect: 'allow' }] }, /sid/],
    ];
    for (const [name, raw, re] of bad) {
      it(`rejects ${name}, naming the path`, () => {
        const v = validatePolicy(raw);
        expect(v.ok).to.equal(false);
        if (!v.ok) expect(v.errors.join('\n')).to.match(re);
      });
    }

    it('reports every problem at once', () => {
      const v = validatePolicy({ defaultDecision: 'x', statements: [{ sid: 'a', effect: 'y' }] });
      expect(v.ok).to.equal(false);
      if (!v.ok) expect(v.errors).to.have.length(2);
    });

    it('accepts an unknown kmsOperation value (never a validation error; a rule may name it)', () => {
      expect(validatePolicy({ defaultDecision: 'allow', statements: [{ sid: 'deny-new', effect: 'deny', conditions: { kmsOperation: ['SomeFutureOperation'] } }] }).ok).to.equal(true);
    });
  });

  describe('wildcards', () => {
    const table: [string, string, boolean][] = [
      ['arn:aws:iam::111122223333:role/*', 'arn:aws:iam::111122223333:role/App', true],
      ['arn:aws:iam::111122223333:role/*', 'arn:aws:iam::111122223333:role/a/b/c', true],
      ['arn:aws:iam::111122223333:role/*', 'arn:aws:iam::111122223333:user/App', false],
      ['arn:aws:iam::*:user/Alice', ALICE, true],
      ['arn:aws:iam::11112222333?:user/Alice', ALICE, true],
      ['arn:aws:iam::1111222233?:user/Alice', ALICE, false],
      ['Generate*', 'GenerateDataKeyWithoutPlaintext', true],
      ['Encrypt', 'ReEncryptFrom', false],
      ['a.b', 'axb', false],
      ['(x)+[y]', '(x)+[y]', true],
      ['*', '', true],
      ['a*b*c', 'aXXbYYc', true],
      ['a*b*c', 'aXXbYY', false],
      ['*?', '', false],
      ['**', 'anything', true],
      ['?*?', 'ab', true],
    ];
    for (const [pattern, value, expected] of table) {
      it(`${pattern} ${expected ? 'matches' : 'does not match'} ${value || '""'}`, () => expect(compilePattern(pattern).test(value)).to.equal(expected));
    }
    it('matches a pathological pattern against a 2048-character value without backtracking blow-up', () => {
      // A backtracking regex takes exponential time here; the scan finishes at once (the test's
      // timeout is the guard).
      const value = 'a'.repeat(2048);
      expect(compilePattern('*a*a*a*a*a*a*a*a*a*a*a*a*b').test(value)).to.equal(false);
      expect(compilePattern('*a*a*a*a*a*a*a*a*a*a*a*a*a').test(value)).to.equal(true);
    });
  });

  describe('evaluation', () => {
    const p = policy({
      defaultDecision: 'deny',
      statements: [
        { sid: 'AllowAppRoleViaEbs', effect: 'allow', conditions: { awsPrincipalArn: ['arn:aws:sts::111122223333:assumed-role/AppRole/*'], kmsViaService: ['ebs'] } },
        { sid: 'AllowAliceEu', effect: 'allow', conditions: { awsPrincipalArn: [ALICE], kmsKeyRegion: ['eu-west-1'] } },
        { sid: 'AllowAccountDescribe', effect: 'allow', conditions: { awsPrincipalAccount: ['111122223333'], kmsOperation: ['DescribeKey', 'CreateKey'] } },
        { sid: 'DenyOtherKeyAccounts', effect: 'deny', conditions: { kmsKeyAccount: ['999988887777'] }, onAbsentField: 'noMatch' },
        { sid: 'DenyReEncrypt', effect: 'deny', conditions: { kmsOperation: ['ReEncrypt*'] } },
        { sid: 'DenyVpcOutsiders', effect: 'deny', conditions: { awsSourceVpc: ['vpc-bad*'] }, onAbsentField: 'noMatch' },
        { sid: 'AllowVpce', effect: 'allow', keys: ['k-vpce'], conditions: { awsSourceVpce: ['vpce-0123'] } },
        { sid: 'DenyLegacyKey', effect: 'deny', keys: ['legacy-*'] },
        { sid: 'AllowByKeyArn', effect: 'allow', conditions: { kmsKeyArn: [KEY_US], awsPrincipalArn: [OTHER] } },
      ],
    });
    const table: [string, PolicyRequest, boolean, string][] = [
      ['app role through EBS', req({ awsPrincipalArn: ROLE, kmsViaService: 'ebs' }), true, 'AllowAppRoleViaEbs'],
      ['app role directly (no via-service)', req({ awsPrincipalArn: ROLE }), false, DEFAULT_DENY],
      ['app role through another service', req({ awsPrincipalArn: ROLE, kmsViaService: 's3' }), false, DEFAULT_DENY],
      ['Alice with an eu-west-1 key', req(), true, 'AllowAliceEu'],
      ['Alice with a us-east-1 key', req({ kmsKeyArn: KEY_US }), false, DEFAULT_DENY],
      ['account principal describing', req({ api: 'GetKeyMetadata', awsPrincipalArn: ROLE, kmsOperation: 'DescribeKey', kmsKeyArn: undefined }), true, 'AllowAccountDescribe'],
      ['deny wins over a matching allow (ReEncrypt by Alice)', req({ kmsOperation: 'ReEncryptTo' }), false, 'DenyReEncrypt'],
      ['deny on the key ARN account', req({ kmsKeyArn: 'arn:aws:kms:eu-west-1:999988887777:key/x' }), false, 'DenyOtherKeyAccounts'],
      ['deny on the source VPC', req({ awsSourceVpc: 'vpc-bad-1' }), false, 'DenyVpcOutsiders'],
      ['a good source VPC is not denied', req({ awsSourceVpc: 'vpc-good' }), true, 'AllowAliceEu'],
      ['per-key allow through a VPC endpoint', req({ key: 'k-vpce', awsPrincipalArn: OTHER, awsSourceVpce: 'vpce-0123', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/z' }), true, 'AllowVpce'],
      ['the per-key allow does not apply to other keys', req({ key: 'k-other', awsPrincipalArn: OTHER, awsSourceVpce: 'vpce-0123', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/z' }), false, DEFAULT_DENY],
      ['per-key deny beats Alice allow', req({ key: 'legacy-7' }), false, 'DenyLegacyKey'],
      ['exact key ARN plus principal', req({ awsPrincipalArn: OTHER, kmsKeyArn: KEY_US }), true, 'AllowByKeyArn'],
      ['unknown principal', req({ awsPrincipalArn: OTHER }), false, DEFAULT_DENY],
      ['an unknown operation is just another value', req({ kmsOperation: 'SomeFutureOperation' }), true, 'AllowAliceEu'],
      ['a principal that is not an ARN has no account', req({ awsPrincipalArn: 'not-an-arn', kmsOperation: 'DescribeKey' }), false, DEFAULT_DENY],
    ];
    for (const [name, r, allow, statement] of table) {
      it(`${allow ? 'allows' : 'denies'} ${name} (${statement})`, () => expect(p.evaluate(r)).to.deep.equal({ allow, statement }));
    }

    it('default-allow mode allows what no statement denies', () => {
      const q = policy({ defaultDecision: 'allow', statements: [{ sid: 'DenyMallory', effect: 'deny', conditions: { awsPrincipalArn: [OTHER] } }] });
      expect(q.evaluate(req())).to.deep.equal({ allow: true, statement: DEFAULT_ALLOW });
      expect(q.evaluate(req({ awsPrincipalArn: OTHER }))).to.deep.equal({ allow: false, statement: 'DenyMallory' });
    });

    it('a statement without conditions matches everything', () => {
      const q = policy({ defaultDecision: 'allow', statements: [{ sid: 'DenyAll', effect: 'deny' }] });
      expect(q.evaluate(req())).to.deep.equal({ allow: false, statement: 'DenyAll' });
    });
  });

  describe('fields the request does not carry', () => {
    const noVpc = req();
    const table: [string, unknown, boolean, string][] = [
      ['a deny condition on an absent field matches (fails safe)', { effect: 'deny', conditions: { awsSourceVpc: ['vpc-bad*'] } }, false, 'S'],
      ['unless the deny statement says "noMatch"', { effect: 'deny', conditions: { awsSourceVpc: ['vpc-bad*'] }, onAbsentField: 'noMatch' }, true, DEFAULT_ALLOW],
      ['a deny with a present and an absent field needs the present one to match', { effect: 'deny', conditions: { awsSourceVpc: ['vpc-bad*'], kmsOperation: ['Decrypt'] } }, true, DEFAULT_ALLOW],
      ['a deny on kmsViaService denies a direct call', { effect: 'deny', conditions: { kmsViaService: ['ebs'] } }, false, 'S'],
    ];
    for (const [name, st, allow, statement] of table) {
      it(name, () => expect(policy({ defaultDecision: 'allow', statements: [{ sid: 'S', ...(st as object) }] }).evaluate(noVpc)).to.deep.equal({ allow, statement }));
    }

    it('an allow condition on an absent field never matches, and may not say otherwise', () => {
      expect(policy({ defaultDecision: 'deny', statements: [{ sid: 'S', effect: 'allow', conditions: { awsSourceVpce: ['vpce-1'] } }] }).evaluate(noVpc)).to.deep.equal({ allow: false, statement: DEFAULT_DENY });
      const v = validatePolicy({ defaultDecision: 'deny', statements: [{ sid: 'S', effect: 'allow', conditions: { awsSourceVpce: ['vpce-1'] }, onAbsentField: 'match' }] });
      expect(v.ok).to.equal(false);
      if (!v.ok) expect(v.errors.join()).to.match(/statements\.0\.onAbsentField/);
    });
  });

  describe('tightening (applies at once) versus loosening (needs the quorum)', () => {
    const doc = (raw: unknown): PolicyDoc => {
      const v = validatePolicy(raw);
      if (!v.ok) throw new Error(v.errors.join('; '));
      return v.policy;
    };
    const allowA = { sid: 'A', effect: 'allow', conditions: { awsPrincipalArn: [ALICE] } };
    const allowB = { sid: 'B', effect: 'allow', conditions: { awsPrincipalArn: [OTHER] } };
    const denyUs = { sid: 'D', effect: 'deny', conditions: { kmsKeyRegion: ['us-*'] } };
    const denyUsWider = { sid: 'D', effect: 'deny', conditions: { kmsKeyRegion: ['us-*', 'ap-*'] } };
    const table: [string, unknown, unknown, boolean][] = [
      ['add a deny', { defaultDecision: 'deny', statements: [allowA] }, { defaultDecision: 'deny', statements: [allowA, denyUs] }, true],
      ['remove an allow', { defaultDecision: 'deny', statements: [allowA, allowB] }, { defaultDecision: 'deny', statements: [allowA] }, true],
      ['default allow -> deny', { defaultDecision: 'allow', statements: [denyUs] }, { defaultDecision: 'deny', statements: [denyUs] }, true],
      ['anything that keeps the denies of an allow-by-default policy', { defaultDecision: 'allow', statements: [denyUs] }, { defaultDecision: 'deny', statements: [denyUs, allowA, allowB] }, true],
      ['the same policy', { defaultDecision: 'deny', statements: [allowA, denyUs] }, { defaultDecision: 'deny', statements: [denyUs, allowA] }, true],
      ['add an allow', { defaultDecision: 'deny', statements: [allowA] }, { defaultDecision: 'deny', statements: [allowA, allowB] }, false],
      ['remove a deny', { defaultDecision: 'allow', statements: [denyUs] }, { defaultDecision: 'allow', statements: [] }, false],
      ['default deny -> allow', { defaultDecision: 'deny', statements: [] }, { defaultDecision: 'allow', statements: [] }, false],
      ['change a deny, even to a wider one (judged by content, not meaning)', { defaultDecision: 'allow', statements: [denyUs] }, { defaultDecision: 'allow', statements: [denyUsWider] }, false],
      ['opt a deny out of absent fields', { defaultDecision: 'allow', statements: [denyUs] }, { defaultDecision: 'allow', statements: [{ ...denyUs, onAbsentField: 'noMatch' }] }, false],
    ];
    for (const [name, current, next, tight] of table) {
      it(`${name}: ${tight ? 'tightening' : 'loosening'}`, () => expect(isTightening(doc(current), doc(next))).to.equal(tight));
    }
  });
});
