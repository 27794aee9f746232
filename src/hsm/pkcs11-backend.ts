/**
 * The PKCS#11 backend: XKS operations as AES-256-GCM inside the HSM, through pkcs11js.
 *
 * The PKCS#11 layer is split by concern: the process-wide module registry (pkcs11-module.ts), the
 * token, session and key helpers the backend and the operator's key commands share
 * (pkcs11-token.ts), and this backend. With key-admin.ts, key-version-admin.ts and
 * state-auth-ops.ts they are the only code in src/ that calls pkcs11js; ckr-table.ts reads its
 * constants. Nothing PKCS#11 leaves this layer: every failure becomes an XksError whose detail (log
 * only) names the CKR code and function, never data or the PIN.
 *
 * HSM discipline (design.md):
 * - the token is found by its label, never by slot index (SoftHSM2 renumbers slots);
 * - C_Initialize with CKF_OS_LOCKING_OK; RW serial sessions in a bounded pool (session-pool.ts);
 * - every encrypt gets an explicit 128-bit tag and, in the default hsm.ivMode 'proxy', a fresh
 *   12-byte IV from the proxy: SoftHSM2 silently accepts an empty IV (IV reuse) and odd tag sizes.
 *   HSMs that generate the IV themselves have their own modes (gcm-iv-modes.ts), which fail closed
 *   when the HSM does not behave as configured;
 * - one table (ckr-table.ts) decides, per CKR code (and hsm.profile, hsm-profile.ts), the XKS
 *   error and whether the session is kept, dropped, the key handle refreshed or the module
 *   re-initialised; the operation is retried at most once after a recovery;
 * - a token or module that is gone is never "key not found": the backend answers InternalException
 *   and re-initialises in the background until the HSM is back (see "Recovery" below);
 * - in hsm.callMode 'async' every C_Encrypt/C_Decrypt has a deadline (hsm.callTimeoutMs).
 *
 * The pkcs11js calls are the synchronous ones (measured faster than the *Async variants for these
 * small payloads); the methods are still async so that the interface does not depend on that.
 */
import { GCM_TAG_BYTES, PROXY_IV_BYTES, planGcmEncrypt } from './gcm-iv-modes';
import { IvSource } from './iv-source';
import * as pkcs11js from 'pkcs11js';
import type { HsmConfig } from '../config/schema';
import { XksError } from '../errors/xks-error';
import type { AppLogger } from '../log/logger';
import type { GcmEncryptResult, HsmBackend, KeyInfo, PoolStats, TokenInfo } from './backend';
import { ckrCode, classifyPkcs11Error, type CkrDecision, type Pkcs11Op } from './ckr-table';
import { HsmCallLatency, type HsmCallStats } from './call-latency';
import { isNetworkHsm, resolveHsmProfile, type HsmProfile } from './hsm-profile';
import { SessionPool, type Lease } from './session-pool';
import * as stateAuth from './state-auth-ops';
import * as keyVersions from './key-versions';
import type { KeyVersionObject } from './key-versions';

/** The GCM tag is always 128 bits (gcm-iv-modes.ts). */
const TAG_BITS = GCM_TAG_BYTES * 8;


import { acquireModule, initializeModule, type ModuleRef } from './pkcs11-module';
import { TOKEN_RESCAN_DELAYS_MS, findSecretKeys, findToken, findTokenRescanning, loginFailureMessage, noTokenMessage, openUserSession, readKeyInfo, toTokenInfo } from './pkcs11-token';

/* ------------------------------------------------------------------------------------------------
 * The backend.
 * ---------------------------------------------------------------------------------------------- */

interface PooledSession {
  readonly handle: pkcs11js.Handle;
  /** Module generation the session was opened in (see Pkcs11Backend.generation). */
  readonly generation: number;
  /** The HSM says the handle is no longer valid: never pass it to C_CloseSession. */
  gone: boolean;
}

interface CachedKey {
  handle: pkcs11js.Handle;
  info: KeyInfo;
}

/** A step marker so that a failure is classified by what was running (find vs decrypt). */
interface Step {
  op: Pkcs11Op;
}

export class Pkcs11Backend implements HsmBackend {
  private readonly p: pkcs11js.PKCS11;
  private readonly pool: SessionPool<PooledSession>;
  /** label -> key handle and attributes; cleared whenever handles may have become invalid. */
  private readonly keys = new Map<string, CachedKey>();
  /** A fresh IV for every encrypt in hsm.ivMode 'proxy' (design.md: never let the HSM default it). */
  private readonly ivs = new IvSource(PROXY_IV_BYTES);
  /**
   * Bumped at every re-initialisation. Session handles are numbered again after C_Initialize, so
   * a session from an older generation must never be passed to C_CloseSession: it could close a
   * new session that happens to have the same number.
   */
  private generation = 0;
  /**
   * The token or module is unusable (a 'reinit' decision, or our token failed the check before
   * a key was reported absent). Calls then answer InternalException at once, unless a recovery
   * attempt is running, which they join; a background timer retries every hsm.recoveryIntervalMs.
   */
  private needsReinit = false;
  /** The recovery attempt running now (one at a time; callers and the timer share it). */
  private recovering: Promise<boolean> | undefined;
  private recoveryTimer: NodeJS.Timeout | undefined;
  /** Last logged reason a recovery attempt failed (each new reason is logged once). */
  private lastRecoveryFailure: string | undefined;
  /** Labels found before: looked up again right after a recovery (fresh handles). */
  private readonly resolvedLabels = new Set<string>();
  private readonly availabilityListeners: ((available: boolean) => void)[] = [];
  private readonly profile: HsmProfile;
  /** C_Encrypt/C_DecryptAsync calls on the thread pool now (hsm.callMode 'async'). */
  private readonly asyncCalls = new Set<Promise<unknown>>();
  /** The time of each C_Encrypt/C_Decrypt (callStats(), the capacity warning). */
  private readonly callLatency: HsmCallLatency;
  private closed = false;
  private info: TokenInfo;
  /** The PIN is kept for re-login after recovery; a #private field is invisible to inspect/JSON. */
  readonly #pin: string;

  private constructor(
    private readonly module: ModuleRef,
    private slot: pkcs11js.Handle,
    tokenInfo: pkcs11js.TokenInfo,
    private readonly cfg: HsmConfig,
    pin: string,
    private readonly log: AppLogger,
  ) {
    this.p = module.pkcs11;
    this.profile = resolveHsmProfile(cfg);
    this.callLatency = new HsmCallLatency(cfg, log);
    this.info = toTokenInfo(tokenInfo);
    this.#pin = pin;
    this.pool = new SessionPool<PooledSession>({
      size: cfg.pool.size,
      acquireTimeoutMs: cfg.pool.acquireTimeoutMs,
      create: () => ({ handle: openUserSession(this.p, this.slot, this.#pin), generation: this.generation, gone: false }),
      destroy: (s) => {
        if (s.gone || s.generation !== this.generation) return;
        this.p.C_CloseSession(s.handle);
      },
    });
  }

  /** See openPkcs11Backend. */
  static async open(cfg: HsmConfig, pin: string, log: AppLogger, opts: Pkcs11OpenOptions = {}): Promise<Pkcs11Backend> {
    const { mod, token } = await findTokenRescanning(() => (opts.module ? opts.module(cfg) : acquireModule(cfg)), cfg.tokenLabel);
    try {
      if (token.slot === undefined || token.info === undefined || token.matches !== 1) {
        throw new Error(noTokenMessage(cfg, token));
      }
      const backend = new Pkcs11Backend(mod, token.slot, token.info, cfg, pin, log);
      // Open one session and log in now: a wrong PIN must stop the start-up, not the first request.
      // SoftHSM2 answers CKR_GENERAL_ERROR to a login while another process rewrites the token's
      // file (its own login: another worker starting, a CLI command), the race findTokenRescanning
      // describes: such a login is tried again. A PIN error never is: each counts against the lockout.
      for (let attempt = 0; ; attempt++) {
        try {
          const lease = await backend.pool.acquire();
          backend.pool.release(lease);
          break;
        } catch (e) {
          if (ckrCode(e) === pkcs11js.CKR_GENERAL_ERROR && attempt < TOKEN_RESCAN_DELAYS_MS.length) {
            await new Promise((resolve) => setTimeout(resolve, TOKEN_RESCAN_DELAYS_MS[attempt]));
            continue;
          }
          await backend.pool.drain();
          throw new Error(loginFailureMessage(cfg.tokenLabel, e));
        }
      }
      log.info('HSM backend open', {
        module: mod.path,
        tokenLabel: cfg.tokenLabel,
        manufacturer: backend.info.manufacturer,
        model: backend.info.model,
        serialNumber: backend.info.serialNumber,
        poolSize: cfg.pool.size,
        ivMode: cfg.ivMode,
        profile: backend.profile,
        callMode: cfg.callMode,
      });
      if (isNetworkHsm(backend.profile) && cfg.callMode === 'sync') {
        // Every call of a network HSM is a round trip; in sync mode it blocks the event loop, so
        // one slow call stalls every request and no deadline can be kept (docs/hsm-profiles.md).
        log.warn('hsm.callMode is "sync" for a network HSM: every HSM round trip blocks the proxy and hsm.callTimeoutMs cannot apply; set hsm.callMode: async', {
          profile: backend.profile,
          module: mod.path,
        });
      }
      return backend;
    } catch (e) {
      mod.release();
      throw e;
    }
  }

  async describeKey(label: string): Promise<KeyInfo> {
    // Metadata calls are rare and operators expect a changed key to show: find the key and read
    // its attributes every time (and refresh the cache with what we read).
    return this.withSession(label, (s) => {
      const entry = this.lookupKey(s, label);
      this.keys.set(label, entry);
      return { ...entry.info, keyUsage: [...entry.info.keyUsage] };
    });
  }

  async encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<GcmEncryptResult> {
    if (plaintext.length === 0) {
      // SoftHSM2 answers CKR_ARGUMENTS_BAD for an empty input and leaves the operation active.
      throw new XksError('ValidationException', undefined, 'empty plaintext');
    }
    return this.withSession(label, (s, step) => {
      const key = this.cachedKey(s, label);
      requireUsage(key.info, 'ENCRYPT');
      // A new plan for every call, retries included: a fresh proxy IV (design.md: never let the
      // HSM default it), or a fresh zero-filled buffer for the HSM to write its IV into.
      const plan = planGcmEncrypt(this.cfg.ivMode, plaintext.length, () => this.ivs.next());
      step.op = 'encrypt';
      this.p.C_EncryptInit(s.handle, gcmMechanism(plan.paramsIv, aad), key.handle);
      const out = Buffer.alloc(plan.outputBytes);
      // Fail closed (InternalException, nothing returned) if the output does not fit hsm.ivMode.
      const t0 = performance.now();
      if (this.cfg.callMode === 'async') return this.onThreadPool(this.p.C_EncryptAsync(s.handle, plaintext, out)).then((o) => plan.finish(this.timed(t0, o)));
      return plan.finish(this.timed(t0, this.p.C_Encrypt(s.handle, plaintext, out)));
    });
  }

  async decrypt(label: string, ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer): Promise<Buffer> {
    // Spec "Decrypt": the IV is 12 or 16 bytes, the tag 16. Anything else cannot authenticate.
    if (iv.length !== 12 && iv.length !== 16) {
      throw new XksError('InvalidCiphertextException', undefined, `IV of ${iv.length} bytes`);
    }
    if (tag.length !== GCM_TAG_BYTES) {
      throw new XksError('InvalidCiphertextException', undefined, `tag of ${tag.length} bytes`);
    }
    return this.withSession(label, (s, step) => {
      const key = this.cachedKey(s, label);
      requireUsage(key.info, 'DECRYPT');
      step.op = 'decrypt';
      this.p.C_DecryptInit(s.handle, gcmMechanism(iv, aad), key.handle);
      // The output buffer must hold ciphertext+tag: SoftHSM2 sizes the check on the whole input,
      // and CKR_BUFFER_TOO_SMALL would leave the operation active.
      const input = Buffer.concat([ciphertext, tag]);
      const out = Buffer.alloc(ciphertext.length + GCM_TAG_BYTES);
      const plaintextOf = (o: Buffer): Buffer => {
        if (o.length !== ciphertext.length) {
          throw new XksError('InternalException', undefined, `C_Decrypt returned ${o.length} bytes for ${ciphertext.length}`);
        }
        return Buffer.from(o);
      };
      const t0 = performance.now();
      if (this.cfg.callMode === 'async') return this.onThreadPool(this.p.C_DecryptAsync(s.handle, input, out)).then((o) => plaintextOf(this.timed(t0, o)));
      return plaintextOf(this.timed(t0, this.p.C_Decrypt(s.handle, input, out)));
    });
  }

  // ---- control state authentication: the operations live in state-auth-ops.ts ----------------

  hmacSign(keyLabel: string, data: Buffer): Promise<Buffer> {
    return this.withSession(keyLabel, (s) => stateAuth.hmacSign(this.p, s.handle, keyLabel, data));
  }

  hmacVerify(keyLabel: string, data: Buffer, mac: Buffer): Promise<boolean> {
    return this.withSession(keyLabel, (s) => stateAuth.hmacVerify(this.p, s.handle, keyLabel, data, mac));
  }

  readDataObjects(label: string): Promise<Buffer[]> {
    return this.withSession(label, (s) => stateAuth.readDataObjects(this.p, s.handle, label));
  }

  writeDataObject(label: string, value: Buffer): Promise<void> {
    return this.withSession(label, (s) => stateAuth.writeDataObject(this.p, s.handle, label, value));
  }

  // ---- key versions: the operations live in key-versions.ts ----------------------------------

  listKeyVersions(label: string): Promise<KeyVersionObject[]> {
    return this.withSession(label, (s) => keyVersions.findKeyVersions(this.p, s.handle, label));
  }

  createKeyVersion(label: string, from?: number): Promise<number> {
    return this.withSession(label, (s) => keyVersions.generateKeyVersion(this.p, s.handle, label, from));
  }

  destroyKeyVersion(label: string, version: number): Promise<void> {
    return this.withSession(label, (s) => {
      const gone = keyVersions.destroyKeyVersion(this.p, s.handle, label, version);
      // The cached handle names a destroyed object: the next use finds the label again (and fails).
      this.keys.delete(gone);
    });
  }

  tokenInfo(): TokenInfo {
    return { ...this.info };
  }

  poolStats(): PoolStats {
    return this.pool.stats();
  }

  onAvailabilityChange(listener: (available: boolean) => void): void {
    this.availabilityListeners.push(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = undefined;
    await this.recovering;
    // Sessions and the module must not go away under a call on the thread pool.
    await this.threadPoolQuiet();
    // Log out only if no one else in this process uses the module: the login is shared.
    if (this.module.soleUser() && !this.needsReinit) {
      try {
        const lease = await this.acquireCurrent();
        try {
          if (lease.resource.generation === this.generation) this.p.C_Logout(lease.resource.handle);
        } catch {
          // not logged in any more: fine
        }
        this.pool.release(lease);
      } catch {
        // no session to log out with: closing the sessions / C_Finalize logs out anyway
      }
    }
    await this.pool.drain();
    this.keys.clear();
    this.module.release();
    this.log.info('HSM backend closed', { tokenLabel: this.cfg.tokenLabel });
  }

  /* ---------------------------------------------------------------------------------------------- */

  /**
   * Runs `fn` with a pooled session. On a PKCS#11 error, ckr-table decides; for drop, reinit and
   * refresh-handle the recovery runs and `fn` is tried once more (with a new IV, session, handle).
   * XksErrors thrown by `fn` (usage refusals, key not found) pass through untouched. `fn` may
   * return a promise (hsm.callMode 'async'): the session stays leased until it settles.
   */
  private async withSession<R>(label: string, fn: (s: PooledSession, step: Step) => R | Promise<R>): Promise<R> {
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new XksError('InternalException', undefined, 'HSM backend is closed');
      if (this.needsReinit) await this.joinRecovery();
      const generation = this.generation;
      const step: Step = { op: 'login' }; // a failure while acquiring is opening a session + login
      let lease: Lease<PooledSession> | undefined;
      try {
        lease = await this.acquireCurrent();
        step.op = 'find';
        let result = fn(lease.resource, step);
        // No extra promise hop for the synchronous calls of hsm.callMode 'sync'.
        if (result instanceof Promise) {
          const settled = await this.withinCallDeadline(result);
          if (settled.timedOut) {
            // The call is still on the thread pool with this session: the session is not reused
            // until it returns, and whatever it returns is discarded.
            this.releaseWhenSettled(result, lease, step.op);
            lease = undefined;
            throw new XksError('DependencyTimeoutException', undefined, `${step.op} took longer than hsm.callTimeoutMs (${this.cfg.callTimeoutMs} ms); the late result is discarded`);
          }
          result = settled.value;
        }
        this.pool.release(lease);
        return result;
      } catch (e) {
        if (e instanceof XksError) {
          if (lease) this.pool.release(lease);
          throw e;
        }
        const failedOp: Pkcs11Op = e instanceof TokenCheckFailed ? 'token-check' : step.op;
        let d = classifyPkcs11Error(e instanceof TokenCheckFailed ? e.cause : e, failedOp, this.profile);
        if (attempt > 0 && isSessionGone(d)) {
          // The retry already ran on a fresh session and that one is gone too: not one dead
          // session but the link to the HSM (a network HSM that dropped us): re-initialise.
          d = { ...d, action: 'reinit' };
        }
        if (lease) {
          if (isSessionGone(d)) lease.resource.gone = true;
          // 'refresh-handle' is about the key, not the session: the session goes back to the pool.
          this.pool.release(lease, { drop: d.action === 'drop' || d.action === 'reinit' });
        }
        const mayRetry = d.retry && attempt === 0 && !this.closed;
        this.log.warn('HSM call failed', {
          keyLabel: label,
          op: failedOp,
          detail: d.detail,
          errorName: d.errorName,
          action: d.action,
          retry: mayRetry,
        });
        const recovered = await this.recover(d, label, mayRetry, generation);
        if (!mayRetry || !recovered) throw new XksError(d.errorName, undefined, d.detail);
      }
    }
  }

  /**
   * hsm.callMode 'async': races a call on the thread pool against hsm.callTimeoutMs. A rejection
   * of the call itself is rethrown (classified by the caller like any PKCS#11 error).
   */
  private withinCallDeadline<R>(call: Promise<R>): Promise<{ timedOut: false; value: R } | { timedOut: true }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve({ timedOut: true }), this.cfg.callTimeoutMs);
      call.then(
        (value) => {
          clearTimeout(timer);
          resolve({ timedOut: false, value });
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  /** Gives a timed-out call's session back once the call has returned (dropped if it failed). */
  private releaseWhenSettled(call: Promise<unknown>, lease: Lease<PooledSession>, op: Pkcs11Op): void {
    call.then(
      () => this.pool.release(lease),
      (e: unknown) => {
        const d = classifyPkcs11Error(e, op, this.profile);
        if (isSessionGone(d)) lease.resource.gone = true;
        this.pool.release(lease, { drop: true });
      },
    );
  }

  /**
   * A pooled session of the current generation. A session opened before a re-initialisation (e.g.
   * handed to a queued caller just before it) has a dead handle whose number may now belong to a
   * new session: it is dropped without C_CloseSession and another one taken.
   */
  private async acquireCurrent(): Promise<Lease<PooledSession>> {
    for (let i = 0; ; i++) {
      const lease = await this.pool.acquire();
      if (lease.resource.generation === this.generation || i > this.cfg.pool.size) return lease;
      this.pool.release(lease, { drop: true });
    }
  }

  /**
   * Applies the table's action; resolves false when the operation cannot be retried because the
   * token or module is still unusable. The cheap actions always run. For 'reinit' the link is
   * marked down (calls fail fast, the background recovery starts) and, if the operation is going
   * to be retried, one recovery attempt runs now so that a passing fault costs no error at all.
   */
  private async recover(d: CkrDecision, label: string, retrying: boolean, attemptGeneration: number): Promise<boolean> {
    // The module was re-initialised since this attempt began (by a concurrent call that hit the
    // same fault first): everything is fresh already, and another C_Finalize would pull the new
    // sessions from under the calls now using them. Just retry.
    if (attemptGeneration !== this.generation) return true;
    switch (d.action) {
      case 'keep':
        return true;
      case 'drop':
        // A dead session rarely comes alone (C_CloseAllSessions, token reset): drop the idle ones
        // too. And SoftHSM2 releases token object handles when the last session on the token
        // closes, so cached key handles may be stale now: find keys again.
        this.pool.discardIdle();
        this.keys.clear();
        return true;
      case 'refresh-handle':
        this.keys.delete(label);
        return true;
      case 'reinit':
        this.markUnavailable(d.detail);
        return retrying ? this.recoveryOutcome(this.attemptRecovery()) : false;
    }
  }

  /** Resolves once no call of this backend is on the thread pool. */
  private async threadPoolQuiet(): Promise<void> {
    while (this.asyncCalls.size > 0) await Promise.allSettled([...this.asyncCalls]);
  }

  /** Tracks a call running on the thread pool until it settles. */
  /** Records the time of a C_Encrypt/C_Decrypt begun at t0 (performance.now()) that returned v. */
  private timed<T>(t0: number, v: T): T {
    this.callLatency.record(performance.now() - t0);
    return v;
  }

  callStats(): HsmCallStats {
    return this.callLatency.stats();
  }

  private onThreadPool<T>(call: Promise<T>): Promise<T> {
    this.asyncCalls.add(call);
    const untrack = () => this.asyncCalls.delete(call);
    call.then(untrack, untrack);
    return call;
  }

  /* --- Recovery ---------------------------------------------------------------------------------
   * What SoftHSM2 2.6 does when its token files go away (measured; docs/hsm-profiles.md, "When the
   * HSM goes away"): with the token's folder moved away, C_GetTokenInfo on the slot answers
   * CKR_GENERAL_ERROR, C_FindObjects succeeds and finds nothing, cached key handles answer
   * CKR_OBJECT_HANDLE_INVALID, while sessions, C_OpenSession and the login stay valid. The token
   * is marked invalid for good: none of this changes when the files come back, only C_Finalize +
   * C_Initialize (which scans the token folder again) does. With the whole token folder gone,
   * C_Initialize itself fails (CKR_GENERAL_ERROR) and the module stays uninitialised
   * (CKR_CRYPTOKI_NOT_INITIALIZED). So a "key not found" must be confirmed against the token
   * first, and recovery means re-initialising until the token is found again.
   * ------------------------------------------------------------------------------------------- */

  /** The token or module is unusable: fail fast from now on and keep trying to recover. */
  private markUnavailable(detail: string): void {
    if (!this.needsReinit) {
      this.needsReinit = true;
      this.log.warn('HSM unavailable: answering InternalException and re-initialising in the background', {
        tokenLabel: this.cfg.tokenLabel,
        detail,
        retryEveryMs: this.cfg.recoveryIntervalMs,
      });
      this.notifyAvailability(false);
    }
    this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    if (this.closed || this.recoveryTimer !== undefined) return;
    this.recoveryTimer = setTimeout(() => {
      this.recoveryTimer = undefined;
      void this.attemptRecovery(); // a failed attempt schedules the next one itself
    }, this.cfg.recoveryIntervalMs);
    this.recoveryTimer.unref();
  }

  /**
   * A call that finds the link down: joins a recovery attempt that is running (in async mode for
   * at most hsm.callTimeoutMs, as it may wait for calls on the thread pool), else fails at once.
   */
  private async joinRecovery(): Promise<void> {
    const running = this.recovering;
    const up = running ? await this.recoveryOutcome(running) : false;
    if (!up && this.needsReinit) {
      throw new XksError('InternalException', undefined, `HSM unavailable (token "${this.cfg.tokenLabel}"); re-initialising in the background`);
    }
  }

  /**
   * What a request waiting on a recovery attempt gets: in async mode the attempt may first wait
   * for calls on the thread pool, so the request waits at most hsm.callTimeoutMs for it.
   */
  private async recoveryOutcome(attempt: Promise<boolean>): Promise<boolean> {
    if (this.cfg.callMode !== 'async') return attempt;
    const settled = await this.withinCallDeadline(attempt);
    if (settled.timedOut) throw new XksError('DependencyTimeoutException', undefined, 'the HSM is being re-initialised (waiting for calls still on it)');
    return settled.value;
  }

  /** One recovery attempt at a time: callers and the timer share it. Resolves true when up. */
  private attemptRecovery(): Promise<boolean> {
    this.recovering ??= this.runRecovery().finally(() => (this.recovering = undefined));
    return this.recovering;
  }

  /**
   * C_Finalize must not run under a call still on the thread pool (hsm.callMode 'async'): wait for
   * those to settle first. Then re-initialise, open a session (log in) and find the keys used so
   * far again: "up" means usable, not just initialised.
   */
  private async runRecovery(): Promise<boolean> {
    await this.threadPoolQuiet();
    if (this.closed) return false;
    if (!this.needsReinit) return true; // recovered by the attempt that just finished
    try {
      this.reinitialise();
      const lease = await this.acquireCurrent();
      try {
        for (const label of this.resolvedLabels) {
          const handles = findSecretKeys(this.p, lease.resource.handle, label, 2);
          if (handles.length === 1) this.keys.set(label, { handle: handles[0]!, info: readKeyInfo(this.p, lease.resource.handle, handles[0]!, label) });
        }
      } finally {
        this.pool.release(lease);
      }
    } catch (e) {
      this.needsReinit = true;
      const why = e instanceof XksError ? (e.detail ?? e.errorName) : classifyPkcs11Error(e, 'login', this.profile).detail;
      if (isPinRefusal(e)) {
        // The token is back but refuses our PIN: retrying would only count down the token's
        // PIN attempts until it locks. The PIN is read at start-up: a restart is needed anyway.
        this.log.error('HSM recovery stopped: the token refuses the PIN; fix hsm.pin and restart the proxy', { tokenLabel: this.cfg.tokenLabel, detail: why });
        return false;
      }
      if (why !== this.lastRecoveryFailure) {
        this.log.warn('HSM recovery attempt failed; retrying', { tokenLabel: this.cfg.tokenLabel, detail: why, retryEveryMs: this.cfg.recoveryIntervalMs });
        this.lastRecoveryFailure = why;
      }
      if (!this.closed) this.scheduleRecovery();
      return false;
    }
    this.lastRecoveryFailure = undefined;
    this.log.warn('PKCS#11 module re-initialised', { module: this.module.path, tokenLabel: this.cfg.tokenLabel, generation: this.generation });
    this.notifyAvailability(true);
    return true;
  }

  private notifyAvailability(available: boolean): void {
    for (const listener of this.availabilityListeners) {
      try {
        listener(available);
      } catch {
        // a listener's failure is its own business
      }
    }
  }

  /**
   * C_Finalize + C_Initialize + find the token by label again (slot ids may have changed). Throws
   * an XksError if the token cannot be reached; needsReinit stays set then.
   */
  private reinitialise(): void {
    this.needsReinit = true;
    this.generation++;
    this.keys.clear();
    this.pool.discardIdle(); // stale generation: dropped without C_CloseSession
    try {
      this.p.C_Finalize();
    } catch {
      // already finalised, e.g. by another user of the module in this process
    }
    try {
      initializeModule(this.p);
      const token = findToken(this.p, this.cfg.tokenLabel);
      if (token.slot === undefined || token.info === undefined || token.matches !== 1) {
        throw new XksError('InternalException', undefined, `re-initialisation: token "${this.cfg.tokenLabel}" not found (${token.matches} matches)`);
      }
      this.slot = token.slot;
      this.info = toTokenInfo(token.info);
    } catch (e) {
      if (e instanceof XksError) throw e;
      throw new XksError('InternalException', undefined, `re-initialisation failed: ${classifyPkcs11Error(e, 'other', this.profile).detail}`);
    }
    this.needsReinit = false;
  }

  /**
   * Before a key is reported absent: does our token still answer, and is it still the token we
   * opened (label and serial number)? SoftHSM2 with its token files gone finds no object at all
   * (see "Recovery" above), and that must be InternalException, never KeyNotFoundException.
   */
  private confirmToken(): void {
    let info: pkcs11js.TokenInfo;
    try {
      info = this.p.C_GetTokenInfo(this.slot);
    } catch (e) {
      throw new TokenCheckFailed(e);
    }
    if ((info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0 || info.label.trim() !== this.info.label || info.serialNumber.trim() !== this.info.serialNumber) {
      throw new TokenCheckFailed(new Error('the slot holds another token than the one opened'));
    }
  }

  /** The cached key, or a lookup (which then fills the cache). */
  private cachedKey(s: PooledSession, label: string): CachedKey {
    const hit = this.keys.get(label);
    if (hit) return hit;
    const entry = this.lookupKey(s, label);
    this.keys.set(label, entry);
    return entry;
  }

  private lookupKey(s: PooledSession, label: string): CachedKey {
    const handles = findSecretKeys(this.p, s.handle, label, 2);
    if (handles.length === 0) {
      this.keys.delete(label);
      this.resolvedLabels.delete(label);
      this.confirmToken();
      throw new XksError('KeyNotFoundException', undefined, `no secret key labelled "${label}" in token "${this.cfg.tokenLabel}"`);
    }
    if (handles.length > 1) {
      this.keys.delete(label);
      throw new XksError('InternalException', undefined, 'ambiguous label');
    }
    const handle = handles[0]!;
    const entry = { handle, info: readKeyInfo(this.p, s.handle, handle, label) };
    this.resolvedLabels.add(label);
    return entry;
  }
}

/** Our token did not pass confirmToken(); `cause` is what C_GetTokenInfo threw, or why it failed. */
class TokenCheckFailed extends Error {
  constructor(override readonly cause: unknown) {
    super('token check failed');
  }
}

/** Refuses, before any HSM call, a key that is not AES-256 or lacks the usage flag. */
function requireUsage(info: KeyInfo, usage: 'ENCRYPT' | 'DECRYPT'): void {
  if (info.keySpec !== 'AES_256') {
    throw new XksError('InvalidKeyUsageException', undefined, `key spec ${info.keySpec}, AES_256 required`);
  }
  if (!info.keyUsage.includes(usage)) {
    throw new XksError('InvalidKeyUsageException', undefined, `key lacks ${usage}`);
  }
}

function gcmMechanism(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
  // The PKCS#11 v2.40 CK_GCM_PARAMS layout (with ulIvBits), the one current modules expect.
  // pkcs11js passes `iv`'s own memory as pIv (no copy): an HSM that writes its IV back there
  // (hsm.ivMode 'hsm-params') writes into this Buffer. An empty `iv` ('hsm-appended') has ulIvBits 0.
  const parameter: pkcs11js.AesGCM = { type: pkcs11js.CK_PARAMS_AES_GCM_v240, iv, ivBits: iv.length * 8, tagBits: TAG_BITS };
  if (aad.length > 0) parameter.aad = aad;
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}

/** The token refused the login itself (as opposed to being unreachable). */
function isPinRefusal(e: unknown): boolean {
  const code = ckrCode(e);
  return code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LOCKED || code === pkcs11js.CKR_PIN_EXPIRED || code === pkcs11js.CKR_PIN_INVALID || code === pkcs11js.CKR_PIN_LEN_RANGE;
}

/** Session-level errors: the handle is dead, so it must not be passed to C_CloseSession. */
function isSessionGone(d: CkrDecision): boolean {
  return d.code === pkcs11js.CKR_SESSION_HANDLE_INVALID || d.code === pkcs11js.CKR_SESSION_CLOSED;
}

/**
 * Opens the HSM: loads cfg.module (after putting cfg.moduleEnv into process.env), initialises it,
 * finds the token labelled cfg.tokenLabel, opens a session and logs in with `pin`. Fails with a plain
 * Error whose message tells the operator what is wrong (module path, labels found, PIN refused);
 * the PIN itself never appears in a message or a log line.
 */
export async function openPkcs11Backend(cfg: HsmConfig, pin: string, log: AppLogger, opts?: Pkcs11OpenOptions): Promise<Pkcs11Backend> {
  return Pkcs11Backend.open(cfg, pin, log, opts);
}

/**
 * Which loaded module this backend talks to. Default: the process-wide one for cfg.module
 * (pkcs11-module.ts). A caller may interpose another ModuleRef in front of it, for this backend
 * only (the tests' fault injection and vendor emulation do: test/helpers/wrapped-module.ts); the
 * backend releases it on close like its own.
 */
export interface Pkcs11OpenOptions {
  module?: (cfg: Pick<HsmConfig, 'module' | 'moduleEnv'>) => ModuleRef;
}
