/**
 * Token, session and key helpers on a loaded module (pkcs11-module.ts), shared by the backend and
 * the operator CLI's key commands (key-admin.ts, key-version-admin.ts).
 */
import * as os from 'node:os';
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../config/schema';
import { XksError } from '../errors/xks-error';
import type { KeyInfo, KeyUsage, TokenInfo } from './backend';
import { ckrCode, ckrName } from './ckr-table';
import { acquireModule, describeEnv, type ModuleRef } from './pkcs11-module';

// CK_STATE values (PKCS#11 2.40 section 5.7); pkcs11js does not export them.
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;

/* ------------------------------------------------------------------------------------------------
 * Token, session and key helpers, shared with key-admin.ts.
 * ---------------------------------------------------------------------------------------------- */

export interface FoundToken {
  slot: pkcs11js.Handle | undefined;
  info: pkcs11js.TokenInfo | undefined;
  /** Labels of all initialised tokens seen (for the operator message). */
  labels: string[];
  /** How many tokens carry the wanted label (more than one is a configuration error). */
  matches: number;
}

/** Finds the slot whose token label (trimmed) equals `label`. Never by slot index. */
export function findToken(p: pkcs11js.PKCS11, label: string): FoundToken {
  const found: FoundToken = { slot: undefined, info: undefined, labels: [], matches: 0 };
  for (const slot of p.C_GetSlotList(true)) {
    let info: pkcs11js.TokenInfo;
    try {
      info = p.C_GetTokenInfo(slot);
    } catch {
      continue; // a token vanishing while we look is not our token
    }
    if ((info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) continue; // SoftHSM2's free slot
    const l = info.label.trim();
    found.labels.push(l);
    if (l === label) {
      found.matches++;
      found.slot = slot;
      found.info = info;
    }
  }
  return found;
}

/** Waits before each fresh scan for a token not found (about 1.5 s in all). */
export const TOKEN_RESCAN_DELAYS_MS: readonly number[] = [50, 100, 200, 400, 800];

/**
 * Finds the token, and when it is missing looks again with a fresh scan (release the module, so
 * that the last user's C_Finalize runs, then C_Initialize again) a few times before giving up.
 *
 * Why: SoftHSM2 rewrites a token's file at every login, and a process whose C_Initialize scans the
 * token folder meanwhile does not see that token (measured on this project's machine: missed in
 * 103-169 of 300 scans while another process logged in and out). Another worker of the same proxy
 * starting at that moment, or an operator's CLI command, does exactly that: with server.workers 2,
 * 1 start in 25 failed with "No token labelled ...". A token that is really absent is reported
 * after the last scan, as before. A fresh scan needs the module to ourselves: when another user in
 * this process holds it, no C_Initialize would run, so the first answer stands.
 */
export async function findTokenRescanning(acquire: () => ModuleRef, label: string, delaysMs: readonly number[] = TOKEN_RESCAN_DELAYS_MS): Promise<{ mod: ModuleRef; token: FoundToken }> {
  let mod = acquire();
  for (let i = 0; ; i++) {
    let token: FoundToken;
    try {
      token = findToken(mod.pkcs11, label);
    } catch (e) {
      mod.release();
      throw e;
    }
    if (token.matches > 0 || i >= delaysMs.length || !mod.soleUser()) return { mod, token };
    mod.release();
    await new Promise((resolve) => setTimeout(resolve, delaysMs[i]));
    mod = acquire();
  }
}

export function noTokenMessage(cfg: Pick<HsmConfig, 'module' | 'moduleEnv' | 'tokenLabel'>, t: FoundToken): string {
  if (t.matches > 1) {
    return `${t.matches} tokens are labelled "${cfg.tokenLabel}" in PKCS#11 module "${cfg.module}"; token labels must be unique.`;
  }
  const seen = t.labels.length === 0 ? 'no initialised token at all' : `tokens found: ${t.labels.map((l) => `"${l}"`).join(', ')}`;
  return `No token labelled "${cfg.tokenLabel}" (hsm.tokenLabel) in PKCS#11 module "${cfg.module}"${describeEnv(cfg.moduleEnv)}; ${seen}.`;
}

export function toTokenInfo(info: pkcs11js.TokenInfo): TokenInfo {
  const v = (x: pkcs11js.Version) => `${x.major}.${x.minor}`;
  return {
    manufacturer: info.manufacturerID.trim(),
    model: `${info.model.trim()} (hardware ${v(info.hardwareVersion)}, firmware ${v(info.firmwareVersion)})`,
    serialNumber: info.serialNumber.trim(),
    label: info.label.trim(),
  };
}

/**
 * Opens an RW serial session and makes sure the user is logged in. Login state belongs to the
 * application and token, not to the session, so C_Login runs only if this session is not already
 * a user session (the first session, or after the token logged out because all sessions closed).
 */
export function openUserSession(p: pkcs11js.PKCS11, slot: pkcs11js.Handle, pin: string): pkcs11js.Handle {
  const session = p.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
  try {
    const state = p.C_GetSessionInfo(session).state;
    if (state !== CKS_RW_USER_FUNCTIONS && state !== CKS_RO_USER_FUNCTIONS) {
      try {
        p.C_Login(session, pkcs11js.CKU_USER, pin);
      } catch (e) {
        if (ckrCode(e) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw e;
      }
    }
  } catch (e) {
    try {
      p.C_CloseSession(session);
    } catch {
      // the login error is the one worth reporting
    }
    throw e;
  }
  return session;
}

/** Operator message for a failed session open/login at start-up. Never contains the PIN. */
export function loginFailureMessage(tokenLabel: string, err: unknown): string {
  const code = ckrCode(err);
  const head = `Cannot log in to token "${tokenLabel}"`;
  switch (code) {
    case pkcs11js.CKR_PIN_INCORRECT:
      return `${head}: the PIN is incorrect (CKR_PIN_INCORRECT). Check the secret named by hsm.pin.`;
    case pkcs11js.CKR_PIN_LOCKED:
      return `${head}: the user PIN is locked (CKR_PIN_LOCKED); the token's security officer must unlock or reset it.`;
    case pkcs11js.CKR_PIN_EXPIRED:
      return `${head}: the user PIN has expired (CKR_PIN_EXPIRED); set a new one.`;
    case pkcs11js.CKR_PIN_INVALID:
    case pkcs11js.CKR_PIN_LEN_RANGE:
      return `${head}: the PIN has invalid characters or length (${ckrName(code)}). Check the secret named by hsm.pin.`;
    case pkcs11js.CKR_USER_PIN_NOT_INITIALIZED:
      return `${head}: the token's user PIN was never initialised (CKR_USER_PIN_NOT_INITIALIZED).`;
    case undefined: {
      const why = err instanceof XksError ? `${err.errorName}${err.detail ? ': ' + err.detail : ''}` : err instanceof Error ? err.name : String(err);
      return `${head}: ${why}`;
    }
    default:
      return `${head}: ${ckrName(code)}.`;
  }
}

/**
 * Handles of the secret keys labelled `label` (all secret keys if `label` is undefined), at most
 * `max`. The search is always finalised, or the session would refuse the next C_FindObjectsInit.
 */
export function findSecretKeys(p: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string | undefined, max = 1000): pkcs11js.Handle[] {
  const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }];
  if (label !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: label });
  p.C_FindObjectsInit(session, template);
  const handles: pkcs11js.Handle[] = [];
  let failed = true;
  try {
    while (handles.length < max) {
      const batch = p.C_FindObjects(session, Math.min(100, max - handles.length));
      handles.push(...batch);
      if (batch.length === 0) break;
    }
    failed = false;
  } finally {
    try {
      p.C_FindObjectsFinal(session);
    } catch (e) {
      if (!failed) throw e; // else the first error is the one that matters
    }
  }
  return handles;
}

const LITTLE_ENDIAN = os.endianness() === 'LE';

/** A CK_ULONG attribute value (native size and byte order). */
function readUlong(b: Buffer): number {
  if (b.length === 8) return Number(LITTLE_ENDIAN ? b.readBigUInt64LE() : b.readBigUInt64BE());
  if (b.length === 4) return LITTLE_ENDIAN ? b.readUInt32LE() : b.readUInt32BE();
  throw new Error(`unexpected CK_ULONG attribute size ${b.length}`);
}

/** Spec GetKeyMetadata keyUsage order; the spec allows at most ten values. */
const USAGE_ATTRIBUTES: readonly [KeyUsage, number][] = [
  ['ENCRYPT', pkcs11js.CKA_ENCRYPT],
  ['DECRYPT', pkcs11js.CKA_DECRYPT],
  ['WRAP', pkcs11js.CKA_WRAP],
  ['UNWRAP', pkcs11js.CKA_UNWRAP],
  ['SIGN', pkcs11js.CKA_SIGN],
  ['VERIFY', pkcs11js.CKA_VERIFY],
  ['DERIVE', pkcs11js.CKA_DERIVE],
];
const MAX_KEY_USAGES = 10;

export function keySpecOf(keyType: number, valueLen: number | undefined): string {
  if (keyType === pkcs11js.CKK_AES) {
    switch (valueLen) {
      case 32:
        return 'AES_256';
      case 24:
        return 'AES_192';
      case 16:
        return 'AES_128';
      default:
        return 'UNSUPPORTED';
    }
  }
  if (keyType === pkcs11js.CKK_GENERIC_SECRET) return 'GENERIC_SECRET';
  return 'UNSUPPORTED';
}

/**
 * Reads a secret key's KeyInfo: CKA_KEY_TYPE + CKA_VALUE_LEN -> keySpec ('AES_256' is the only
 * spec an XKS key may have), the usage flags -> keyUsage. `label` is read from CKA_LABEL when not
 * given. Shared by the backend (describeKey, key cache) and key-admin (listKeys).
 */
export function readKeyInfo(p: pkcs11js.PKCS11, session: pkcs11js.Handle, handle: pkcs11js.Handle, label?: string): KeyInfo {
  const types = [pkcs11js.CKA_KEY_TYPE, ...USAGE_ATTRIBUTES.map(([, t]) => t)];
  if (label === undefined) types.push(pkcs11js.CKA_LABEL);
  const values = new Map<number, Buffer>();
  for (const a of p.C_GetAttributeValue(session, handle, types.map((type) => ({ type })))) values.set(a.type, a.value);
  // CKA_VALUE_LEN is not defined for every secret key type (DES keys): read it on its own.
  let valueLen: number | undefined;
  try {
    const [v] = p.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE_LEN }]);
    if (v) valueLen = readUlong(v.value);
  } catch (e) {
    if (ckrCode(e) !== pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID) throw e;
  }
  const keyType = readUlong(values.get(pkcs11js.CKA_KEY_TYPE) ?? Buffer.alloc(0));
  const keyUsage = USAGE_ATTRIBUTES.filter(([, t]) => (values.get(t)?.[0] ?? 0) !== 0)
    .map(([u]) => u)
    .slice(0, MAX_KEY_USAGES);
  return {
    label: label ?? (values.get(pkcs11js.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'),
    keySpec: keySpecOf(keyType, valueLen),
    keyUsage,
  };
}

/**
 * For short operator commands (key-admin.ts): load the module, find the token, open a logged-in
 * session, run `fn`, close everything. Errors are plain Errors with operator messages. If a backend
 * in this process already holds the token, its login is shared (PKCS#11 login is per process).
 */
export async function withTokenSession<R>(
  cfg: Pick<HsmConfig, 'module' | 'moduleEnv' | 'tokenLabel'>,
  pin: string,
  fn: (p: pkcs11js.PKCS11, session: pkcs11js.Handle) => R,
): Promise<R> {
  const { mod, token } = await findTokenRescanning(() => acquireModule(cfg), cfg.tokenLabel);
  try {
    const p = mod.pkcs11;
    if (token.slot === undefined || token.matches !== 1) throw new Error(noTokenMessage(cfg, token));
    let session: pkcs11js.Handle;
    try {
      session = openUserSession(p, token.slot, pin);
    } catch (e) {
      throw new Error(loginFailureMessage(cfg.tokenLabel, e));
    }
    try {
      return fn(p, session);
    } finally {
      // Closing our last session on the token logs it out (PKCS#11), unless a backend in this
      // process still has sessions there: an explicit C_Logout would log that backend out too.
      try {
        p.C_CloseSession(session);
      } catch {
        // nothing to do
      }
    }
  } finally {
    mod.release();
  }
}

