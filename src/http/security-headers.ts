/**
 * helmet's security headers, computed once at start-up: the XKS listener answers every request
 * with the same set, so running helmet's middleware chain per request would be pure overhead on
 * the hot path. helmet stays the single source of what the headers are.
 */
import helmet from 'helmet';
import type { IncomingMessage, ServerResponse } from 'node:http';

function computeHelmetHeaders(): readonly (readonly [string, string])[] {
  const headers = new Map<string, string>();
  const res = {
    setHeader: (k: string, v: string | number | readonly string[]) => headers.set(k, Array.isArray(v) ? v.join(', ') : String(v)),
    removeHeader: (k: string) => headers.delete(k),
  };
  let synchronous = false;
  // A JSON API serves no documents: nothing may be loaded, framed or embedded.
  const middleware = helmet({
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    frameguard: { action: 'deny' },
  });
  middleware({} as IncomingMessage, res as unknown as ServerResponse, () => {
    synchronous = true;
  });
  if (!synchronous) throw new Error('helmet did not apply its headers synchronously');
  return [...headers.entries()];
}

export const SECURITY_HEADERS = computeHelmetHeaders();

/** Flattened [name, value, name, value, ...] for ServerResponse.writeHead. */
export const SECURITY_HEADERS_FLAT: readonly string[] = SECURITY_HEADERS.flat();
