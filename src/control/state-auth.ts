/**
 * What authenticates the control state, as the state store sees it: a MAC made and checked inside
 * the HSM, and an HSM-held record of the highest generation written (the "anchor"). The file store
 * asks nothing else of the HSM; the PKCS#11 side is src/hsm/state-auth-ops.ts.
 *
 * Why an anchor in the token and not only in the MAC'd file: every file the proxy ever wrote
 * carries a valid MAC, so a MAC alone cannot tell the current state from an older one (an attacker
 * copies state.prev.json over state.json to lift a block). The token's private data object can be
 * changed only by someone logged in to the token, which file access to the state folder does not
 * give; so "generation below the anchor" is a rollback, and "no file although the anchor exists"
 * a deletion. Writers write the file first and the anchor second, and readers read the anchor
 * first and the file second, so a reader never mistakes a concurrent legitimate write for a
 * rollback (the file's generation is never below an anchor read before it).
 */
import type { HsmBackend } from '../hsm/backend';
import { toXksError } from '../errors/xks-error';

export interface Anchor {
  /** Random id of the state store, fixed at its first initialisation: files of another store are refused. */
  storeId: string;
  /** Highest generation written (or accepted) for this store. */
  generation: number;
}

export interface StateAuthenticator {
  /** For messages: the MAC key's and the anchor's labels in the token. */
  readonly keyLabel: string;
  readonly anchorLabel: string;
  mac(data: Buffer): Promise<Buffer>;
  verify(data: Buffer, mac: Buffer): Promise<boolean>;
  /** undefined when the token holds no anchor (a store never initialised with this token). */
  readAnchor(): Promise<Anchor | undefined>;
  writeAnchor(a: Anchor): Promise<void>;
}

export interface StateAuthSettings {
  hsmKeyLabel: string;
  anchorLabel: string;
}

export type StateHsm = Pick<HsmBackend, 'hmacSign' | 'hmacVerify' | 'readDataObjects' | 'writeDataObject'>;

export function hsmStateAuthenticator(hsm: StateHsm, s: StateAuthSettings): StateAuthenticator {
  return {
    keyLabel: s.hsmKeyLabel,
    anchorLabel: s.anchorLabel,
    mac: (data) => hsm.hmacSign(s.hsmKeyLabel, data),
    verify: (data, mac) => hsm.hmacVerify(s.hsmKeyLabel, data, mac),
    async readAnchor() {
      // Two records only after a crash inside a write: the higher one is the truth.
      let best: Anchor | undefined;
      for (const v of await hsm.readDataObjects(s.anchorLabel)) {
        const a = parseAnchor(v, s.anchorLabel);
        if (best && a.storeId !== best.storeId) throw new Error(`the token holds generation records of two state stores under "${s.anchorLabel}"`);
        if (!best || a.generation > best.generation) best = a;
      }
      return best;
    },
    writeAnchor: (a) => hsm.writeDataObject(s.anchorLabel, Buffer.from(JSON.stringify({ storeId: a.storeId, generation: a.generation }))),
  };
}

function parseAnchor(v: Buffer, label: string): Anchor {
  let a: Partial<Anchor>;
  try {
    a = JSON.parse(v.toString('utf8')) as Partial<Anchor>;
  } catch {
    a = {};
  }
  if (typeof a.storeId !== 'string' || typeof a.generation !== 'number' || !Number.isInteger(a.generation)) {
    throw new Error(`the token's data object "${label}" does not hold a control state generation record`);
  }
  return { storeId: a.storeId, generation: a.generation };
}

/**
 * Start-up check: the MAC key exists and is usable (sensitive, not extractable, sign/verify).
 * Throws an Error that tells the operator how to create it.
 */
export async function checkStateKey(auth: StateAuthenticator, tokenLabel: string): Promise<void> {
  try {
    await auth.mac(Buffer.from('xks-proxy control state key check'));
  } catch (e) {
    const x = toXksError(e);
    const create = `xks-proxy keys create --type hmac --label ${auth.keyLabel}`;
    if (x.errorName === 'KeyNotFoundException') {
      throw new Error(`the control state's MAC key "${auth.keyLabel}" (control.stateAuth.hsmKeyLabel) is not in token "${tokenLabel}". Create it with: ${create}`);
    }
    throw new Error(`the control state's MAC key "${auth.keyLabel}" cannot be used (${x.detail ?? x.errorName}). It must be an HMAC key that never leaves the HSM, as "${create}" makes.`);
  }
}
