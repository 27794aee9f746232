/**
 * Operators for tests: key pairs made with the CLI's own functions, a JWKS file, and a client for
 * the admin API that mints a fresh single-use token per call.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { JWK } from 'jose';
import { generateOperatorKey, mintOperatorToken, type MintOptions, type Role } from '../../../src/admin/tokens';
import { collectResponse } from '../../../src/util/http-response';

export const AUDIENCE = 'xks-it-appliance';

export interface Operators {
  jwksFile: string;
  keys: Record<string, { privateJwk: JWK; publicJwk: JWK }>;
  token(name: string, o?: Partial<MintOptions>): Promise<string>;
}

/** roles per operator name, e.g. { alice: ['operator'], audrey: ['auditor'] }. */
export async function makeOperators(dir: string, roles: Record<string, Role[]>): Promise<Operators> {
  const keys: Operators['keys'] = {};
  for (const [name, r] of Object.entries(roles)) keys[name] = await generateOperatorKey(name, name.endsWith('-ec') ? 'ES256' : 'EdDSA', r);
  const jwksFile = path.join(dir, 'operators.jwks.json');
  fs.writeFileSync(jwksFile, JSON.stringify({ keys: Object.values(keys).map((k) => k.publicJwk) }));
  return {
    jwksFile,
    keys,
    token: (name, o = {}) => mintOperatorToken({ privateJwk: keys[name]!.privateJwk, role: (roles[name] ?? ['operator'])[0]!, audience: AUDIENCE, ttlSeconds: 60, ...o }),
  };
}

export interface AdminResult {
  status: number;
  json: any;
  headers: http.IncomingHttpHeaders;
  text: string;
}

export function adminRaw(port: number, method: string, urlPath: string, token: string | undefined, body?: unknown): Promise<AdminResult> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(text ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) } : {}) } }, (res) => {
      collectResponse(res).then((r) => resolve({ status: r.status, json: r.json, headers: r.headers, text: r.text }), reject);
    });
    req.on('error', reject);
    if (text) req.write(text);
    req.end();
  });
}

export function adminClient(port: () => number, ops: Operators) {
  return async (as: string, method: string, urlPath: string, body?: unknown): Promise<AdminResult> => adminRaw(port(), method, urlPath, await ops.token(as), body);
}

/**
 * The request log is written after the response is sent (in the pipeline's finally), through an
 * asynchronous file transport: wait for the file to change until `pred` holds (bounded).
 */
export async function waitForLog(read: () => string, file: string, pred: (text: string) => boolean, timeoutMs = 3000): Promise<string> {
  let text = read();
  if (pred(text)) return text;
  const watcher = fs.watch(path.dirname(file));
  try {
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`log condition not met within ${timeoutMs} ms`)), timeoutMs);
      const check = () => {
        text = read();
        if (pred(text)) {
          clearTimeout(timer);
          resolve(text);
        }
      };
      watcher.on('change', check);
      // A write between the first read and the watch.
      check();
    });
  } finally {
    watcher.close();
  }
}
