/**
 * The one table that decides what a PKCS#11 return value (CKR_*) means for the proxy
 * (design.md "HSM discipline"): which XKS errorName the client gets, and what the backend does with
 * the session and the module before it retries (at most once).
 *
 * Actions:
 *  - keep            the session is healthy; answer with errorName, no retry.
 *  - drop            close/forget the session (and idle ones, see pkcs11-backend.ts), retry once.
 *  - reinit          C_Finalize/C_Initialize, find the token again, log in, new sessions, retry once.
 *  - refresh-handle  forget the cached key handle, find the key again, retry once.
 *
 * `errorName` is what the client gets when no retry is allowed or the retry fails as well.
 *
 * This module imports pkcs11js only for its CKR_* constants and error class; it never calls the
 * module. Nothing here may leak data: the detail names the CKR code and the PKCS#11 function only.
 */
import * as pkcs11js from 'pkcs11js';
import type { ErrorName } from '../errors/xks-error';
import { tagFailureAsGeneralError, type HsmProfile } from './hsm-profile';

export type CkrAction = 'keep' | 'drop' | 'reinit' | 'refresh-handle';
/**
 * What the proxy was doing. 'token-check' is the C_GetTokenInfo on our own slot that runs before
 * a key is reported absent (pkcs11-backend.ts): if the token itself does not answer, whatever the
 * code, the key is not "not found", the token is unusable.
 */
export type Pkcs11Op = 'encrypt' | 'decrypt' | 'find' | 'login' | 'token-check' | 'other';

export interface CkrRule {
  errorName: ErrorName;
  action: CkrAction;
  /**
   * Used instead when the failing call was part of a decrypt (C_DecryptInit/C_Decrypt): there a
   * data error means the client's ciphertext, IV, tag or AAD is bad, and says nothing about the HSM.
   */
  onDecrypt?: {
    errorName: ErrorName;
    action: CkrAction;
    /** Only on HSM profiles known to report a failed GCM tag with this code (hsm-profile.ts). */
    tagFailureProfilesOnly?: true;
  };
}

export interface CkrDecision {
  errorName: ErrorName;
  action: CkrAction;
  /** true for every action except 'keep': the backend may run the operation once more. */
  retry: boolean;
  /** Numeric CKR code, or undefined when the error was not a PKCS#11 return value. */
  code: number | undefined;
  /** Log-safe: CKR name, hex code and PKCS#11 function; never data, PINs or messages from callers. */
  detail: string;
}

const INTERNAL_KEEP: CkrRule = { errorName: 'InternalException', action: 'keep' };
const INTERNAL_DROP: CkrRule = { errorName: 'InternalException', action: 'drop' };
const REINIT: CkrRule = { errorName: 'InternalException', action: 'reinit' };
const REFRESH: CkrRule = { errorName: 'InternalException', action: 'refresh-handle' };
const KEY_USAGE: CkrRule = { errorName: 'InvalidKeyUsageException', action: 'keep' };
/** A data error on decrypt: spec "Decrypt": InvalidCiphertextException, no detail (no oracle). */
const BAD_CIPHERTEXT = { errorName: 'InvalidCiphertextException', action: 'keep' } as const;

/** The table. Every code not listed is "unknown": InternalException, drop the session. */
export const CKR_TABLE: ReadonlyMap<number, CkrRule> = new Map<number, CkrRule>([
  // --- The session is gone (C_CloseAllSessions by another thread/instance, token reset). A fresh
  // session is all it takes; the retry opens one (and logs in again if the token logged out).
  [pkcs11js.CKR_SESSION_HANDLE_INVALID, INTERNAL_DROP],
  [pkcs11js.CKR_SESSION_CLOSED, INTERNAL_DROP],
  // The session still has an operation in progress (SoftHSM2 leaves one active after e.g.
  // CKR_ARGUMENTS_BAD or CKR_BUFFER_TOO_SMALL); it would refuse every later *Init: drop it.
  [pkcs11js.CKR_OPERATION_ACTIVE, INTERNAL_DROP],
  [pkcs11js.CKR_OPERATION_NOT_INITIALIZED, INTERNAL_DROP],
  // PKCS#11 keeps the operation active after BUFFER_TOO_SMALL so that the caller can ask again;
  // we never do, so the session is unusable.
  [pkcs11js.CKR_BUFFER_TOO_SMALL, INTERNAL_DROP],
  // SoftHSM2 returns ARGUMENTS_BAD from C_Encrypt without ending the operation (seen with an
  // empty input), so the session is not clean afterwards.
  [pkcs11js.CKR_ARGUMENTS_BAD, INTERNAL_DROP],
  [pkcs11js.CKR_FUNCTION_CANCELED, INTERNAL_DROP],
  [pkcs11js.CKR_CANCEL, INTERNAL_DROP],

  // --- The module, the device or the login is gone. Sessions and handles are all invalid; only a
  // full re-initialisation (C_Finalize, C_Initialize, find the token by label, C_Login) recovers
  // without restarting the proxy. Until it succeeds, the backend retries it in the background
  // (hsm.recoveryIntervalMs) and answers InternalException at once: never KeyNotFoundException.
  [pkcs11js.CKR_DEVICE_REMOVED, REINIT],
  [pkcs11js.CKR_DEVICE_ERROR, REINIT],
  [pkcs11js.CKR_TOKEN_NOT_PRESENT, REINIT],
  [pkcs11js.CKR_TOKEN_NOT_RECOGNIZED, REINIT],
  // Someone called C_Finalize in this process (another library user, a test's fault injection).
  [pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED, REINIT],
  [pkcs11js.CKR_USER_NOT_LOGGED_IN, REINIT],
  // The slot id we hold no longer exists: SoftHSM2 renumbers slots at C_Initialize.
  [pkcs11js.CKR_SLOT_ID_INVALID, REINIT],

  // --- The cached key handle is stale (key deleted/recreated, or SoftHSM2 released the token
  // object handles when the last session on the token closed). Find the key again by label: if it
  // is really gone, the lookup answers KeyNotFoundException, but only after C_GetTokenInfo has
  // confirmed that our token still answers (op 'token-check'): SoftHSM2 whose token files were
  // moved away reports every handle invalid and finds no object at all.
  [pkcs11js.CKR_OBJECT_HANDLE_INVALID, REFRESH],
  [pkcs11js.CKR_KEY_HANDLE_INVALID, REFRESH],
  [pkcs11js.CKR_KEY_CHANGED, REFRESH],

  // --- The key exists but may not do this (CKA_ENCRYPT/CKA_DECRYPT false, or not an AES key).
  // The backend checks usage before calling the HSM; these catch a key changed since it was cached.
  [pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED, KEY_USAGE],
  [pkcs11js.CKR_KEY_TYPE_INCONSISTENT, KEY_USAGE],
  [pkcs11js.CKR_KEY_SIZE_RANGE, KEY_USAGE],

  // --- Data errors. On decrypt they mean the client's input is bad; the operation has ended and
  // the session is fine. Anywhere else they are our bug.
  // CKR_GENERAL_ERROR is special: SoftHSM2 reports a wrong GCM tag or AAD that way (design.md), but
  // on other HSMs it is a device fault, and a customer must not be told their data is corrupt
  // because an HSM failed. So it means InvalidCiphertextException only on a profile known to
  // report tag failures so (hsm.profile 'softhsm2'); elsewhere InternalException, session dropped.
  [pkcs11js.CKR_ENCRYPTED_DATA_INVALID, { ...INTERNAL_KEEP, onDecrypt: BAD_CIPHERTEXT }],
  [pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE, { ...INTERNAL_KEEP, onDecrypt: BAD_CIPHERTEXT }],
  [pkcs11js.CKR_GENERAL_ERROR, { ...INTERNAL_DROP, onDecrypt: { ...BAD_CIPHERTEXT, tagFailureProfilesOnly: true } }],
  [pkcs11js.CKR_DATA_INVALID, { ...INTERNAL_KEEP, onDecrypt: BAD_CIPHERTEXT }],
  [pkcs11js.CKR_DATA_LEN_RANGE, { ...INTERNAL_KEEP, onDecrypt: BAD_CIPHERTEXT }],
  // An IV length the HSM does not take (the spec allows 12 or 16 bytes on decrypt).
  [pkcs11js.CKR_MECHANISM_PARAM_INVALID, { ...INTERNAL_KEEP, onDecrypt: BAD_CIPHERTEXT }],

  // --- Memory: transient, nothing wrong with the session; retrying at once rarely helps.
  [pkcs11js.CKR_HOST_MEMORY, INTERNAL_KEEP],
  [pkcs11js.CKR_DEVICE_MEMORY, INTERNAL_KEEP],

  // --- Configuration or capability problems: retrying cannot help, the session is fine.
  [pkcs11js.CKR_MECHANISM_INVALID, INTERNAL_KEEP],
  [pkcs11js.CKR_FUNCTION_NOT_SUPPORTED, INTERNAL_KEEP],
  [pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID, INTERNAL_KEEP],
  [pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID, INTERNAL_KEEP],
  [pkcs11js.CKR_ATTRIBUTE_SENSITIVE, INTERNAL_KEEP],
  [pkcs11js.CKR_TEMPLATE_INCOMPLETE, INTERNAL_KEEP],
  [pkcs11js.CKR_TEMPLATE_INCONSISTENT, INTERNAL_KEEP],
  [pkcs11js.CKR_SESSION_COUNT, INTERNAL_KEEP],
  [pkcs11js.CKR_SESSION_READ_ONLY, INTERNAL_KEEP],
  [pkcs11js.CKR_TOKEN_WRITE_PROTECTED, INTERNAL_KEEP],
  [pkcs11js.CKR_CANT_LOCK, INTERNAL_KEEP],
  [pkcs11js.CKR_NEED_TO_CREATE_THREADS, INTERNAL_KEEP],

  // --- Login. A wrong or locked PIN does not get better by retrying (and retrying burns the
  // token's PIN counter). ALREADY_LOGGED_IN and ALREADY_INITIALIZED are tolerated by the backend
  // before it ever consults this table; listed so that they are never "unknown".
  [pkcs11js.CKR_PIN_INCORRECT, INTERNAL_KEEP],
  [pkcs11js.CKR_PIN_INVALID, INTERNAL_KEEP],
  [pkcs11js.CKR_PIN_LEN_RANGE, INTERNAL_KEEP],
  [pkcs11js.CKR_PIN_EXPIRED, INTERNAL_KEEP],
  [pkcs11js.CKR_PIN_LOCKED, INTERNAL_KEEP],
  [pkcs11js.CKR_USER_PIN_NOT_INITIALIZED, INTERNAL_KEEP],
  [pkcs11js.CKR_USER_TYPE_INVALID, INTERNAL_KEEP],
  [pkcs11js.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, INTERNAL_KEEP],
  [pkcs11js.CKR_USER_TOO_MANY_TYPES, INTERNAL_KEEP],
  [pkcs11js.CKR_USER_ALREADY_LOGGED_IN, INTERNAL_KEEP],
  [pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED, INTERNAL_KEEP],
]);

/**
 * Unknown codes (vendor-defined, CKR_FUNCTION_FAILED, non-PKCS#11 exceptions): we cannot tell
 * whether the session is still sane, so it is dropped and the operation tried once more on a new one.
 */
const UNKNOWN: CkrRule = INTERNAL_DROP;

/** Any failure of the token check (see Pkcs11Op): the token is unusable. */
const TOKEN_GONE: CkrRule = REINIT;

/** CKR code -> name, from the constants pkcs11js exports (for log detail only). */
const CKR_NAMES: ReadonlyMap<number, string> = (() => {
  const names = new Map<number, string>();
  for (const [name, value] of Object.entries(pkcs11js as unknown as Record<string, unknown>)) {
    if (name.startsWith('CKR_') && typeof value === 'number' && !names.has(value)) names.set(value, name);
  }
  return names;
})();

export function ckrName(code: number): string {
  return CKR_NAMES.get(code) ?? 'CKR_UNKNOWN';
}

/** The CKR code of a pkcs11js error, or undefined if `err` is not a PKCS#11 return value. */
export function ckrCode(err: unknown): number | undefined {
  if (err instanceof pkcs11js.Pkcs11Error && typeof err.code === 'number') return err.code;
  return undefined;
}

/** The PKCS#11 functions each operation calls, for errors whose function pkcs11js leaves unnamed. */
const OP_FUNCTIONS: Record<Pkcs11Op, string> = {
  encrypt: 'C_EncryptInit/C_Encrypt',
  decrypt: 'C_DecryptInit/C_Decrypt',
  find: 'C_FindObjectsInit/C_FindObjects',
  login: 'C_OpenSession/C_Login',
  'token-check': 'C_GetTokenInfo',
  other: 'a PKCS#11 call',
};

/** The function that failed: pkcs11js names it for most calls, but leaves it empty for some (C_Encrypt, C_Decrypt). */
function methodOf(err: unknown, op: Pkcs11Op): string {
  const m = (err as { method?: unknown } | null)?.method;
  return typeof m === 'string' && /^C_\w+$/.test(m) ? m : OP_FUNCTIONS[op];
}

/**
 * Classifies any error thrown by a pkcs11js call. `op` is what the proxy was doing: 'decrypt'
 * changes the outcome of data errors (InvalidCiphertextException, for CKR_GENERAL_ERROR only on
 * `profile`s that report tag failures so); 'token-check' makes any failure a lost token; the
 * others are for the log.
 */
export function classifyPkcs11Error(err: unknown, op: Pkcs11Op, profile: HsmProfile): CkrDecision {
  const code = ckrCode(err);
  if (op === 'token-check') {
    const what = code === undefined ? (err instanceof Error ? err.name : typeof err) : `${ckrName(code)} (0x${code.toString(16)})`;
    return { errorName: TOKEN_GONE.errorName, action: TOKEN_GONE.action, retry: true, code, detail: `${what} in ${methodOf(err, op)} during token-check` };
  }
  if (code === undefined) {
    // Not a CKR value: a NativeError (e.g. dlopen) or a TypeError from the binding. Their messages
    // come from the binding and describe arguments, never their contents; still, keep it short.
    const name = err instanceof Error ? err.name : typeof err;
    const msg = err instanceof Error ? err.message.slice(0, 120) : '';
    return {
      errorName: UNKNOWN.errorName,
      action: UNKNOWN.action,
      retry: true,
      code: undefined,
      detail: `${name}${msg ? ': ' + msg : ''} in ${methodOf(err, op)} during ${op}`,
    };
  }
  const rule = CKR_TABLE.get(code) ?? UNKNOWN;
  const onDecrypt = op === 'decrypt' ? rule.onDecrypt : undefined;
  const chosen = onDecrypt && (!onDecrypt.tagFailureProfilesOnly || tagFailureAsGeneralError(profile)) ? onDecrypt : rule;
  return {
    errorName: chosen.errorName,
    action: chosen.action,
    retry: chosen.action !== 'keep',
    code,
    detail: `${ckrName(code)} (0x${code.toString(16)}) in ${methodOf(err, op)} during ${op}`,
  };
}
