/**
 * The HSM family behind hsm.module (hsm.profile). PKCS#11 leaves some return codes open to the
 * vendor, and the proxy must not guess their meaning on an HSM it does not know:
 *
 * - CKR_GENERAL_ERROR on C_Decrypt. SoftHSM2 2.6 reports a failed GCM tag (wrong ciphertext, IV,
 *   tag or AAD) that way instead of CKR_ENCRYPTED_DATA_INVALID. On another HSM the same code is a
 *   device fault, and answering InvalidCiphertextException would make KMS tell a customer their
 *   data is corrupt. ckr-table.ts reads tagFailureAsGeneralError() to decide.
 * - Network HSMs (Luna Network HSM, CloudHSM, nShield Connect) spend a network round trip in every
 *   call; in hsm.callMode 'sync' that round trip blocks the event loop (warned at start-up).
 *
 * Unset, the profile is recognised from the module's file name (the vendors' library names);
 * anything else is 'generic', which assumes nothing (fail closed: InternalException, not a verdict
 * on the customer's data).
 */
import * as path from 'node:path';
import type { HsmConfig } from '../config/schema';

export type HsmProfile = NonNullable<HsmConfig['profile']>;

interface ProfileTraits {
  /** The module's file name, to recognise the profile when hsm.profile is unset. */
  modulePattern: RegExp | undefined;
  /** A failed GCM tag on C_Decrypt comes back as CKR_GENERAL_ERROR. */
  tagFailureAsGeneralError: boolean;
  /** Every call is a network round trip: hsm.callMode 'async' is expected. */
  networkHsm: boolean;
}

const TRAITS: Record<HsmProfile, ProfileTraits> = {
  softhsm2: { modulePattern: /^libsofthsm2?\.(so|dylib)/i, tagFailureAsGeneralError: true, networkHsm: false },
  luna: { modulePattern: /^libcryptoki2(_64)?\.so/i, tagFailureAsGeneralError: false, networkHsm: true },
  cloudhsm: { modulePattern: /^libcloudhsm_pkcs11\.so/i, tagFailureAsGeneralError: false, networkHsm: true },
  nshield: { modulePattern: /^libcknfast\.so/i, tagFailureAsGeneralError: false, networkHsm: true },
  generic: { modulePattern: undefined, tagFailureAsGeneralError: false, networkHsm: false },
};

/** hsm.profile, or the profile recognised from hsm.module's file name, else 'generic'. */
export function resolveHsmProfile(cfg: Pick<HsmConfig, 'module' | 'profile'>): HsmProfile {
  if (cfg.profile) return cfg.profile;
  const file = path.basename(cfg.module);
  for (const [name, t] of Object.entries(TRAITS) as [HsmProfile, ProfileTraits][]) {
    if (t.modulePattern?.test(file)) return name;
  }
  return 'generic';
}

export function tagFailureAsGeneralError(profile: HsmProfile): boolean {
  return TRAITS[profile].tagFailureAsGeneralError;
}

export function isNetworkHsm(profile: HsmProfile): boolean {
  return TRAITS[profile].networkHsm;
}
