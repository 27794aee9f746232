/**
 * A real SoftHSM2 token with the control state's MAC key, for tests of the authenticated control
 * state: one backend per file (see softhsm-token.ts rules), and a fresh generation record label
 * per store, so that many state folders can share the token.
 */
import { randomBytes } from 'node:crypto';
import { hsmStateAuthenticator, type StateAuthenticator } from '../../src/control/state-auth';
import { createKey } from '../../src/hsm/key-admin';
import { openPkcs11Backend, type Pkcs11Backend } from '../../src/hsm/pkcs11-backend';
import { createSilentLogger } from '../../src/log/logger';
import { createTestToken, type TestToken } from './softhsm-token';

export const STATE_KEY_LABEL = 'xks-control-state';

/** Creates the control state's MAC key (as `xks-proxy keys create --type hmac` does). */
export function createStateKey(token: TestToken, label = STATE_KEY_LABEL): Promise<void> {
  return createKey(token.hsmConfig, token.pin, { label, type: 'hmac', usage: 'none' });
}

export interface StateHsm {
  token: TestToken;
  hsm: Pkcs11Backend;
  /** An authenticator with a generation record of its own (a new store). */
  newAuth(): StateAuthenticator;
  close(): Promise<void>;
}

export async function openStateHsm(): Promise<StateHsm> {
  const token = createTestToken();
  await createStateKey(token);
  const hsm = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger());
  return {
    token,
    hsm,
    newAuth: () => hsmStateAuthenticator(hsm, { hsmKeyLabel: STATE_KEY_LABEL, anchorLabel: `anchor-${randomBytes(6).toString('hex')}` }),
    async close() {
      await hsm.close();
      token.cleanup();
    },
  };
}
