/**
 * The four XKS operations over the HsmBackend interface (spec "API operations").
 * Knows nothing of HTTP or SigV4; receives already-validated inputs.
 */
import type { KeyStore, ExternalKeyEntry } from '../auth/key-stores';
import { XksError } from '../errors/xks-error';
import type { HsmBackend } from '../hsm/backend';
import type { AppLogger } from '../log/logger';
import { buildAwsSampleGcmAad, buildGcmAad } from './aad';
import { computeCdiv } from './cdiv';
import type { HealthMonitor } from './health-monitor';
import { KEY_VERSIONS_DEFAULTS } from './key-versions-config';
import { KeyVersionManager } from './key-versions';
import type { DecryptInput, EncryptInput } from './requests';

export interface ProxyIdentity {
  vendor: string;
  /** Product name and version, e.g. "XKS Appliance Proxy 0.1.0". */
  model: string;
  fleetSize: number;
}

export interface KeyMetadataResponse {
  keySpec: string;
  keyUsage: string[];
  keyStatus: 'ENABLED' | 'DISABLED';
}

export interface EncryptResponse {
  ciphertext: string;
  initializationVector: string;
  authenticationTag: string;
  /** Present once the key has been rotated: the key version (src/xks/version-metadata.ts). */
  ciphertextMetadata?: string;
  ciphertextDataIntegrityValue?: string;
}

export interface HealthResponse {
  xksProxyFleetSize: number;
  xksProxyVendor: string;
  xksProxyModel: string;
  ekmVendor: string;
  ekmFleetDetails: { id: string; model: string; healthStatus: string }[];
}

/** Times spent inside the HSM, for the request log. */
export interface HsmTiming {
  hsmMs: number;
  /** Set when a Decrypt succeeded only with the AWS sample proxy's AAD layout (for metrics and audit). */
  aadLayout?: 'aws-sample';
}

export class XksService {
  constructor(
    private readonly hsm: HsmBackend,
    private readonly health: HealthMonitor,
    private readonly identity: ProxyIdentity,
    private readonly log: AppLogger,
    /** Key versions and usage counts (src/xks/key-versions.ts); default: in memory, no rotation. */
    readonly versions: KeyVersionManager = new KeyVersionManager(hsm, KEY_VERSIONS_DEFAULTS, log),
  ) {}

  /** Spec: only keys of this key store exist for its callers; others are KeyNotFoundException. */
  private key(ks: KeyStore, externalKeyId: string): ExternalKeyEntry {
    const k = ks.key(externalKeyId);
    if (!k) throw new XksError('KeyNotFoundException', undefined, `no key ${externalKeyId} in key store ${ks.name}`);
    return k;
  }

  private usableKey(ks: KeyStore, externalKeyId: string): ExternalKeyEntry {
    const k = this.key(ks, externalKeyId);
    if (!k.enabled) throw new XksError('InvalidStateException', 'The external key is disabled.', `key ${externalKeyId} is disabled by configuration`);
    return k;
  }

  private async timed<T>(t: HsmTiming, f: () => Promise<T>): Promise<T> {
    const start = process.hrtime.bigint();
    try {
      return await f();
    } finally {
      t.hsmMs += Number(process.hrtime.bigint() - start) / 1e6;
    }
  }

  /** keyBlocked: the operator blocked this key (kill switch at key scope): report it DISABLED. */
  async getKeyMetadata(ks: KeyStore, externalKeyId: string, t: HsmTiming, keyBlocked = false): Promise<KeyMetadataResponse> {
    const k = this.key(ks, externalKeyId);
    const info = await this.timed(t, async () => {
      try {
        return await this.hsm.describeKey(k.label);
      } catch (e) {
        // The original version was retired: the key is its current version now (same spec and usage).
        if (!(e instanceof XksError && e.errorName === 'KeyNotFoundException') || !(await this.versions.isRetired(k, 0))) throw e;
        return this.hsm.describeKey(await this.versions.currentHsmLabel(k));
      }
    });
    return { keySpec: info.keySpec, keyUsage: info.keyUsage.slice(0, 10), keyStatus: k.enabled && !keyBlocked ? 'ENABLED' : 'DISABLED' };
  }

  async encrypt(ks: KeyStore, externalKeyId: string, input: EncryptInput, t: HsmTiming): Promise<EncryptResponse> {
    const k = this.usableKey(ks, externalKeyId);
    // The current key version, its encryption counted first (GCM limit). A key never rotated is
    // version 0 and gets no ciphertextMetadata, so the GCM AAD stays uint16be(len(aad)) || aad || 0x00.
    const v = await this.timed(t, () => this.versions.forEncrypt(k));
    const gcmAad = buildGcmAad(input.aad, v.metadata);
    const out = await this.timed(t, () => this.hsm.encrypt(v.hsmLabel, input.plaintext, gcmAad));
    const response: EncryptResponse = {
      ciphertext: out.ciphertext.toString('base64'),
      initializationVector: out.iv.toString('base64'),
      authenticationTag: out.tag.toString('base64'),
    };
    if (v.metadata) response.ciphertextMetadata = v.metadata.toString('base64');
    if (input.cdivRequested) {
      // Spec Appendix C: compute the CDIV first, then prove the output decrypts, so that a bit
      // flip after this point cannot produce a CDIV that vouches for a corrupt ciphertext.
      response.ciphertextDataIntegrityValue = computeCdiv({ aad: input.aad, ciphertextMetadata: v.metadata, iv: out.iv, ciphertext: out.ciphertext, tag: out.tag });
      await this.proveRoundTrip(v.hsmLabel, input.plaintext, out.ciphertext, out.iv, out.tag, gcmAad, t);
    }
    return response;
  }

  private async proveRoundTrip(hsmLabel: string, plaintext: Buffer, ct: Buffer, iv: Buffer, tag: Buffer, aad: Buffer, t: HsmTiming): Promise<void> {
    let back: Buffer;
    try {
      back = await this.timed(t, () => this.hsm.decrypt(hsmLabel, ct, iv, tag, aad));
    } catch (e) {
      if (e instanceof XksError && e.errorName === 'InvalidKeyUsageException') {
        // Spec Appendix C: a returned CDIV is the proxy's assurance that a later Decrypt of this
        // ciphertext will succeed. A key that may not decrypt can never keep that promise, so the
        // CDIV request is refused rather than answered with a value that vouches for nothing.
        this.log.debug('CDIV refused: the key may not decrypt', { label: hsmLabel });
        throw new XksError(
          'InvalidKeyUsageException',
          'The external key may encrypt but not decrypt, so the proxy cannot vouch for the ciphertext with a ciphertextDataIntegrityValue. Encrypt without ciphertextDataIntegrityValueAlgorithm, or use a key that may decrypt.',
          `CDIV refused: key ${hsmLabel} may not decrypt, the round trip cannot be proven`,
        );
      }
      throw new XksError('InternalException', undefined, `CDIV round trip failed: ${e instanceof XksError ? e.errorName : 'error'}`);
    }
    if (!back.equals(plaintext)) throw new XksError('InternalException', undefined, 'CDIV round trip returned different plaintext');
  }

  async decrypt(ks: KeyStore, externalKeyId: string, input: DecryptInput, t: HsmTiming): Promise<{ plaintext: string }> {
    const k = this.usableKey(ks, externalKeyId);
    // The version named by the metadata (none: the original key); the metadata itself goes into
    // the AAD as received, so a changed byte fails the tag even where it names a real version.
    const v = await this.timed(t, () => this.versions.forDecrypt(k, input.ciphertextMetadata, ks.compatibility));
    const gcmAad = buildGcmAad(input.aad, input.ciphertextMetadata);
    try {
      const plaintext = await this.timed(t, () => this.hsm.decrypt(v.hsmLabel, input.ciphertext, input.iv, input.tag, gcmAad));
      this.versions.recordDecrypt(k, v.version);
      return { plaintext: plaintext.toString('base64') };
    } catch (e) {
      // Sealed under a version that was retired (destroyed) since this proxy last read the
      // versions: the ciphertext can never decrypt again, which the spec names
      // InvalidCiphertextException; the key itself still exists.
      if (e instanceof XksError && e.errorName === 'KeyNotFoundException' && (await this.versions.isRetired(k, v.version))) {
        throw new XksError('InvalidCiphertextException', undefined, `the ciphertext names version ${v.version} of key "${k.label}", which was retired`);
      }
      // A key store migrated from the AWS sample proxy: its ciphertexts were sealed under that
      // proxy's AAD layout. Try it second, so that new ciphertexts cost one HSM call; the answer to
      // a ciphertext that fits neither stays InvalidCiphertextException, with no hint which failed.
      if (ks.compatibility !== 'aws-sample' || !(e instanceof XksError) || e.errorName !== 'InvalidCiphertextException') throw e;
      // Without an AAD field the sample's layout is the spec's, already tried; an empty AAD field
      // (which the request parser does not tell from an absent one) is the one other candidate.
      const sampleAad = buildAwsSampleGcmAad(input.aad ?? Buffer.alloc(0), input.ciphertextMetadata);
      const plaintext = await this.timed(t, () => this.hsm.decrypt(v.hsmLabel, input.ciphertext, input.iv, input.tag, sampleAad));
      this.versions.recordDecrypt(k, v.version);
      t.aadLayout = 'aws-sample';
      return { plaintext: plaintext.toString('base64') };
    }
  }

  /**
   * Spec GetHealthStatus. A 200 answer should mean the next crypto call will work, so when the
   * HSM is UNAVAILABLE we answer InternalException (KMS: "cannot communicate with the external
   * key manager") rather than a 200 that KMS would read as healthy.
   */
  async getHealthStatus(t: HsmTiming): Promise<HealthResponse> {
    const h = await this.timed(t, () => this.health.current());
    if (h.status === 'UNAVAILABLE') throw new XksError('InternalException', 'The external key manager is unavailable.', h.detail);
    const token = this.hsm.tokenInfo();
    return {
      xksProxyFleetSize: this.identity.fleetSize,
      xksProxyVendor: this.identity.vendor,
      xksProxyModel: this.identity.model,
      ekmVendor: token.manufacturer || 'unknown',
      ekmFleetDetails: [{ id: token.serialNumber || token.label, model: token.model || 'unknown', healthStatus: h.status }],
    };
  }
}
