/**
 * The etcd v3 client of fleet mode, built from control.etcd (TLS with client certificates, etcd's
 * user/password read from a file), and the small helpers the fleet code shares.
 */
import fs from 'node:fs';
import { Etcd3, type IOptions } from 'etcd3';
import { readSecret } from '../config/secrets';
import type { EtcdConfig } from './config';

export function connectEtcd(c: EtcdConfig): Etcd3 {
  // A call sent to a member that just died waits for its connection without a deadline; with one,
  // it fails as DEADLINE_EXCEEDED, which the client retries on another member (seen in the fleet
  // test: token id claims hung for 5 s after one etcd member was killed). Streams (watch, lease
  // keep-alive) have no deadline.
  const attemptMs = Math.max(500, Math.floor(c.maxStalenessMs / 3));
  const opts: IOptions = {
    hosts: c.endpoints.map((e) => e.replace(/\/$/, '')),
    dialTimeout: Math.max(1000, c.maxStalenessMs),
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + attemptMs }),
  };
  if (c.tls) {
    opts.credentials = {
      rootCertificate: fs.readFileSync(c.tls.caFile),
      ...(c.tls.keyFile ? { privateKey: fs.readFileSync(c.tls.keyFile) } : {}),
      ...(c.tls.certFile ? { certChain: fs.readFileSync(c.tls.certFile) } : {}),
    };
  }
  if (c.auth) opts.auth = { username: c.auth.username, password: readSecret({ file: c.auth.passwordFile }) };
  return new Etcd3(opts);
}

/** The promise's result, or a rejection naming `what` once `ms` have passed (the call is abandoned). */
export function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from etcd within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A prefix that ends with "/" (keys are prefix + name). */
export function normalisePrefix(p: string): string {
  return p.endsWith('/') ? p : `${p}/`;
}
