import { expect } from 'chai';
import * as pkcs11js from 'pkcs11js';
import { ERROR_STATUS, type ErrorName } from '../../../src/errors/xks-error';
import { CKR_TABLE, ckrName, classifyPkcs11Error, type CkrAction, type Pkcs11Op } from '../../../src/hsm/ckr-table';
import type { HsmProfile } from '../../../src/hsm/hsm-profile';

/** An error shaped exactly like the ones pkcs11js throws for a CKR value. */
function ckrError(code: number, method = 'C_Encrypt'): Error {
  return new pkcs11js.Pkcs11Error(`${ckrName(code)}:${code}`, code, method);
}

const P = pkcs11js;
const OPS: Pkcs11Op[] = ['encrypt', 'decrypt', 'find', 'login', 'other'];
const PROFILES: HsmProfile[] = ['softhsm2', 'luna', 'cloudhsm', 'nshield', 'generic'];
/** Profiles whose HSM is not known to report a failed GCM tag as CKR_GENERAL_ERROR. */
const NOT_SOFTHSM: HsmProfile[] = PROFILES.filter((p) => p !== 'softhsm2');

interface Case {
  code: number;
  ops: Pkcs11Op[];
  errorName: ErrorName;
  action: CkrAction;
  /** Default: every profile. */
  profiles?: HsmProfile[];
}

const CASES: Case[] = [
  // session gone -> drop + retry
  { code: P.CKR_SESSION_HANDLE_INVALID, ops: OPS, errorName: 'InternalException', action: 'drop' },
  { code: P.CKR_SESSION_CLOSED, ops: OPS, errorName: 'InternalException', action: 'drop' },
  { code: P.CKR_OPERATION_ACTIVE, ops: OPS, errorName: 'InternalException', action: 'drop' },
  { code: P.CKR_BUFFER_TOO_SMALL, ops: OPS, errorName: 'InternalException', action: 'drop' },
  // module/device/login gone -> reinit + retry
  { code: P.CKR_DEVICE_REMOVED, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  { code: P.CKR_DEVICE_ERROR, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  { code: P.CKR_TOKEN_NOT_PRESENT, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  { code: P.CKR_CRYPTOKI_NOT_INITIALIZED, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  { code: P.CKR_USER_NOT_LOGGED_IN, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  { code: P.CKR_SLOT_ID_INVALID, ops: OPS, errorName: 'InternalException', action: 'reinit' },
  // stale key handle -> refresh + retry
  { code: P.CKR_OBJECT_HANDLE_INVALID, ops: OPS, errorName: 'InternalException', action: 'refresh-handle' },
  { code: P.CKR_KEY_HANDLE_INVALID, ops: OPS, errorName: 'InternalException', action: 'refresh-handle' },
  // key may not do this
  { code: P.CKR_KEY_FUNCTION_NOT_PERMITTED, ops: ['encrypt', 'decrypt'], errorName: 'InvalidKeyUsageException', action: 'keep' },
  { code: P.CKR_KEY_TYPE_INCONSISTENT, ops: ['encrypt', 'decrypt'], errorName: 'InvalidKeyUsageException', action: 'keep' },
  // bad ciphertext/IV/tag/AAD on decrypt: InvalidCiphertextException, session kept
  { code: P.CKR_ENCRYPTED_DATA_INVALID, ops: ['decrypt'], errorName: 'InvalidCiphertextException', action: 'keep' },
  { code: P.CKR_ENCRYPTED_DATA_LEN_RANGE, ops: ['decrypt'], errorName: 'InvalidCiphertextException', action: 'keep' },
  // CKR_GENERAL_ERROR is a failed tag only where the HSM is known to report it so (SoftHSM2); on
  // any other HSM it is a device fault: never tell a customer their data is corrupt for that.
  { code: P.CKR_GENERAL_ERROR, ops: ['decrypt'], errorName: 'InvalidCiphertextException', action: 'keep', profiles: ['softhsm2'] },
  { code: P.CKR_GENERAL_ERROR, ops: ['decrypt'], errorName: 'InternalException', action: 'drop', profiles: NOT_SOFTHSM },
  // ... but the same codes anywhere else are not the client's fault
  { code: P.CKR_ENCRYPTED_DATA_INVALID, ops: ['encrypt', 'find', 'other'], errorName: 'InternalException', action: 'keep' },
  { code: P.CKR_GENERAL_ERROR, ops: ['encrypt', 'find', 'login', 'other'], errorName: 'InternalException', action: 'drop' },
  // memory -> InternalException, keep
  { code: P.CKR_HOST_MEMORY, ops: OPS, errorName: 'InternalException', action: 'keep' },
  { code: P.CKR_DEVICE_MEMORY, ops: OPS, errorName: 'InternalException', action: 'keep' },
  // login failures are not retried
  { code: P.CKR_PIN_INCORRECT, ops: ['login'], errorName: 'InternalException', action: 'keep' },
  { code: P.CKR_PIN_LOCKED, ops: ['login'], errorName: 'InternalException', action: 'keep' },
  // unknown -> InternalException, drop
  { code: P.CKR_FUNCTION_FAILED, ops: OPS, errorName: 'InternalException', action: 'drop' },
  { code: 0x80000042, ops: OPS, errorName: 'InternalException', action: 'drop' },
];

describe('CKR table', () => {
  for (const c of CASES) {
    for (const op of c.ops) {
      const profiles = c.profiles ?? PROFILES;
      const on = c.profiles ? ` on ${profiles.join('/')}` : '';
      it(`${ckrName(c.code)} (0x${c.code.toString(16)}) during ${op}${on} -> ${c.errorName}, ${c.action}`, () => {
        for (const profile of profiles) {
          const d = classifyPkcs11Error(ckrError(c.code, 'C_Decrypt'), op, profile);
          expect(d.errorName, profile).to.equal(c.errorName);
          expect(d.action, profile).to.equal(c.action);
          expect(d.retry).to.equal(c.action !== 'keep');
          expect(d.code).to.equal(c.code);
        }
      });
    }
  }

  it('any failure of the token check (C_GetTokenInfo before "key not found") means the token is gone: reinit', () => {
    // SoftHSM2 with its token files moved away answers CKR_GENERAL_ERROR there (pkcs11-backend.ts).
    for (const err of [ckrError(P.CKR_GENERAL_ERROR, 'C_GetTokenInfo'), ckrError(P.CKR_TOKEN_NOT_PRESENT, 'C_GetTokenInfo'), ckrError(P.CKR_OK), new Error('another token')]) {
      for (const profile of PROFILES) {
        const d = classifyPkcs11Error(err, 'token-check', profile);
        expect(d.errorName).to.equal('InternalException');
        expect(d.action).to.equal('reinit');
        expect(d.retry).to.equal(true);
      }
    }
    expect(classifyPkcs11Error(ckrError(P.CKR_GENERAL_ERROR, 'C_GetTokenInfo'), 'token-check', 'softhsm2').detail).to.equal('CKR_GENERAL_ERROR (0x5) in C_GetTokenInfo during token-check');
  });

  it('only holds real pkcs11js CKR constants', () => {
    const known = new Set(
      Object.entries(pkcs11js as unknown as Record<string, unknown>)
        .filter(([k, v]) => k.startsWith('CKR_') && typeof v === 'number')
        .map(([, v]) => v as number),
    );
    for (const code of CKR_TABLE.keys()) {
      expect(code, 'a missing constant would be an undefined key').to.be.a('number');
      expect(known.has(code), `0x${code.toString(16)}`).to.equal(true);
    }
  });

  it('gives every pkcs11js CKR code, in every op, a spec errorName and a known action', () => {
    const actions = new Set<CkrAction>(['keep', 'drop', 'reinit', 'refresh-handle']);
    let n = 0;
    for (const [name, value] of Object.entries(pkcs11js as unknown as Record<string, unknown>)) {
      if (!name.startsWith('CKR_') || typeof value !== 'number') continue;
      for (const op of OPS) {
        const d = classifyPkcs11Error(ckrError(value), op, 'generic');
        expect(Object.keys(ERROR_STATUS)).to.include(d.errorName);
        expect(actions.has(d.action)).to.equal(true);
        n++;
      }
    }
    expect(n).to.be.greaterThan(400);
  });

  it('only decrypt turns a data error into InvalidCiphertextException', () => {
    for (const profile of PROFILES) {
      for (const op of OPS) {
        for (const [code, rule] of CKR_TABLE) {
          const d = classifyPkcs11Error(ckrError(code), op, profile);
          if (d.errorName === 'InvalidCiphertextException') {
            expect(op, ckrName(code)).to.equal('decrypt');
            expect(rule.onDecrypt, ckrName(code)).to.not.equal(undefined);
          }
        }
      }
    }
  });

  it('writes a log-safe detail: CKR name, hex code, function and op', () => {
    const d = classifyPkcs11Error(ckrError(P.CKR_GENERAL_ERROR, 'C_Decrypt'), 'decrypt', 'softhsm2');
    expect(d.detail).to.equal('CKR_GENERAL_ERROR (0x5) in C_Decrypt during decrypt');
  });

  it('names an unlisted vendor code CKR_UNKNOWN with its hex value', () => {
    const d = classifyPkcs11Error(ckrError(0x80000042, 'C_Encrypt'), 'encrypt', 'generic');
    expect(d.detail).to.equal('CKR_UNKNOWN (0x80000042) in C_Encrypt during encrypt');
  });

  it('does not trust a method name that is not a PKCS#11 function', () => {
    const e = ckrError(P.CKR_GENERAL_ERROR, 'C_Decrypt');
    (e as unknown as { method: string }).method = 'secret plaintext here';
    const d = classifyPkcs11Error(e, 'decrypt', 'softhsm2');
    expect(d.detail).to.not.include('secret');
    expect(d.detail).to.equal('CKR_GENERAL_ERROR (0x5) in C_DecryptInit/C_Decrypt during decrypt');
  });

  it('names the functions of the operation when pkcs11js leaves the method empty (it does for C_Encrypt and C_Decrypt)', () => {
    const e = ckrError(P.CKR_SESSION_HANDLE_INVALID, 'C_Encrypt');
    (e as unknown as { method: string }).method = '';
    expect(classifyPkcs11Error(e, 'encrypt', 'softhsm2').detail).to.equal('CKR_SESSION_HANDLE_INVALID (0xb3) in C_EncryptInit/C_Encrypt during encrypt');
  });

  it('treats errors that are not CKR values as unknown: InternalException, drop', () => {
    for (const err of [new TypeError('Argument 0 has wrong type. Should be a Buffer'), new Error('boom'), 'a string', undefined]) {
      const d = classifyPkcs11Error(err, 'encrypt', 'generic');
      expect(d.errorName).to.equal('InternalException');
      expect(d.action).to.equal('drop');
      expect(d.code).to.equal(undefined);
    }
    expect(classifyPkcs11Error(new TypeError('x'), 'other', 'generic').detail).to.match(/^TypeError: x in a PKCS#11 call during other$/);
  });

  it('does not mistake an Error carrying a numeric code for a CKR value', () => {
    const e = Object.assign(new Error('EACCES'), { code: 5 });
    const d = classifyPkcs11Error(e, 'decrypt', 'softhsm2');
    expect(d.errorName).to.equal('InternalException', 'only a pkcs11js Pkcs11Error is a CKR value');
  });
});
