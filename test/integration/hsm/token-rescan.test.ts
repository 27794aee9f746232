/**
 * A token that a scan misses is looked for again with a fresh scan (pkcs11-token.ts
 * findTokenRescanning): SoftHSM2 rewrites a token's file at every login, and another process's
 * C_Initialize meanwhile does not see the token, which made 1 in 25 starts of a two-worker proxy
 * fail. The miss is injected here (the real module behind a wrapper whose slot list leaves the
 * token out for the first scans); the token, the sessions and the encrypt are the real SoftHSM2's.
 * The race itself is measured from outside by bench/worker-start.ts.
 */
import { expect } from 'chai';
import * as pkcs11js from 'pkcs11js';
import { openPkcs11Backend } from '../../../src/hsm/pkcs11-backend';
import { acquireModule } from '../../../src/hsm/pkcs11-module';
import { TOKEN_RESCAN_DELAYS_MS } from '../../../src/hsm/pkcs11-token';
import { createKey } from '../../../src/hsm/key-admin';
import { createSilentLogger } from '../../../src/log/logger';
import { ckrError } from '../../helpers/faulty-module';
import { wrappedModule } from '../../helpers/wrapped-module';
import { createTestToken, type TestToken } from '../../helpers/softhsm-token';

describe('a token missed by a scan is looked for again', () => {
  let token: TestToken;
  before(async () => {
    token = createTestToken();
    await createKey(token.hsmConfig, token.pin, { label: 'k1', usage: 'encrypt-decrypt' });
  });
  after(() => token.cleanup());

  /** The real module, with the token left out of the slot list for the first `hiddenScans` scans. */
  function hidingFirstScans(hiddenScans: number): { wrap: (real: pkcs11js.PKCS11) => pkcs11js.PKCS11; scans: () => number } {
    let scans = 0;
    const wrap = (real: pkcs11js.PKCS11) =>
      new Proxy(real, {
        get(target, prop, receiver) {
          if (prop === 'C_GetSlotList') {
            return (tokenPresent?: boolean) => {
              scans++;
              const slots = target.C_GetSlotList(tokenPresent);
              return scans <= hiddenScans ? slots.filter((s) => target.C_GetTokenInfo(s).label.trim() !== token.tokenLabel) : slots;
            };
          }
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    return { wrap, scans: () => scans };
  }

  it('opens once a fresh scan finds the token, and encrypts', async () => {
    const miss = hidingFirstScans(2);
    const backend = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger(), wrappedModule(miss.wrap));
    try {
      expect(miss.scans()).to.equal(3);
      const out = await backend.encrypt('k1', Buffer.from('after a rescan'), Buffer.from('aad'));
      expect(out.ciphertext.length).to.equal('after a rescan'.length);
    } finally {
      await backend.close();
    }
  });

  it('reports a token that is really absent after the last scan, naming the tokens it saw', async () => {
    const miss = hidingFirstScans(Number.MAX_SAFE_INTEGER);
    let err: Error | undefined;
    try {
      await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger(), wrappedModule(miss.wrap));
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).to.match(new RegExp(`^No token labelled "${token.tokenLabel}" \\(hsm\\.tokenLabel\\)`));
    expect(miss.scans()).to.equal(TOKEN_RESCAN_DELAYS_MS.length + 1);
  });

  it('does not rescan while another user in this process holds the module (no C_Initialize would run)', async () => {
    const other = acquireModule(token.hsmConfig);
    const miss = hidingFirstScans(1);
    let err: Error | undefined;
    try {
      await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger(), wrappedModule(miss.wrap));
    } catch (e) {
      err = e as Error;
    } finally {
      other.release();
    }
    expect(err?.message).to.match(/^No token labelled/);
    expect(miss.scans()).to.equal(1);
  });

  /** The real module, with C_Login failing with `code` for the first `failures` calls. */
  function failingLogins(code: number, failures: number): { wrap: (real: pkcs11js.PKCS11) => pkcs11js.PKCS11; logins: () => number } {
    let logins = 0;
    const wrap = (real: pkcs11js.PKCS11) =>
      new Proxy(real, {
        get(target, prop, receiver) {
          if (prop === 'C_Login') {
            return (session: pkcs11js.Handle, userType: number, pin?: string) => {
              logins++;
              if (logins <= failures) throw ckrError(code, 'C_Login');
              return target.C_Login(session, userType, pin);
            };
          }
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    return { wrap, logins: () => logins };
  }

  it('a login answered CKR_GENERAL_ERROR (another process rewriting the token file) is tried again', async () => {
    const f = failingLogins(pkcs11js.CKR_GENERAL_ERROR, 2);
    const backend = await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger(), wrappedModule(f.wrap));
    try {
      expect(f.logins()).to.equal(3);
      expect((await backend.encrypt('k1', Buffer.from('x'), Buffer.alloc(0))).ciphertext.length).to.equal(1);
    } finally {
      await backend.close();
    }
  });

  it('a wrong PIN is not tried again (each try counts against the lockout)', async () => {
    const f = failingLogins(pkcs11js.CKR_PIN_INCORRECT, 1);
    let err: Error | undefined;
    try {
      await openPkcs11Backend(token.hsmConfig, token.pin, createSilentLogger(), wrappedModule(f.wrap));
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).to.match(/the PIN is incorrect \(CKR_PIN_INCORRECT\)/);
    expect(f.logins()).to.equal(1);
  });
});
