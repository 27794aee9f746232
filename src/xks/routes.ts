/**
 * URI routing (spec "API operations"):
 *   {prefix}/kms/xks/v1/health
 *   {prefix}/kms/xks/v1/keys/{externalKeyId}/{metadata|encrypt|decrypt}
 * Anything else is 404 InvalidUriPathException; a known URI with another method than POST is 405.
 */
import type { KeyStore, KeyStoreRegistry } from '../auth/key-stores';
import { EXTERNAL_KEY_ID_RE } from '../config/schema';
import { XksError } from '../errors/xks-error';
import type { XksApi } from './requests';

export interface Route {
  api: XksApi;
  keyStore: KeyStore;
  externalKeyId?: string;
}

const OPERATION_API: Record<string, XksApi> = {
  metadata: 'GetKeyMetadata',
  encrypt: 'Encrypt',
  decrypt: 'Decrypt',
};

export function resolveRoute(registry: KeyStoreRegistry, path: string): Route {
  const m = registry.match(path);
  if (!m) throw new XksError('InvalidUriPathException', undefined, `no key store serves ${path.slice(0, 300)}`);
  if (m.rest === '/health') return { api: 'GetHealthStatus', keyStore: m.keyStore };
  const parts = m.rest.split('/');
  // ['', 'keys', id, operation]
  if (parts.length === 4 && parts[0] === '' && parts[1] === 'keys' && EXTERNAL_KEY_ID_RE.test(parts[2]!)) {
    const api = OPERATION_API[parts[3]!];
    if (api) return { api, keyStore: m.keyStore, externalKeyId: parts[2]! };
  }
  throw new XksError('InvalidUriPathException', undefined, `unknown path under key store ${m.keyStore.name}`);
}
