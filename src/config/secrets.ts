/**
 * Reading PINs and SigV4 secrets: from an environment variable or a secret file, never from the
 * config file itself. Errors name the source (variable or path), never the value.
 */
import fs from 'node:fs';
import type { SecretSource } from './schema';

export class SecretError extends Error {}

export function readSecret(source: SecretSource, env: NodeJS.ProcessEnv = process.env): string {
  if (source.env !== undefined) {
    const v = env[source.env];
    if (v === undefined || v.length === 0) throw new SecretError(`environment variable ${source.env} is not set or empty`);
    return v;
  }
  if (source.file === undefined) throw new SecretError('secret source names neither env nor file');
  let text: string;
  try {
    text = fs.readFileSync(source.file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new SecretError(`cannot read secret file ${source.file} (${code})`);
  }
  // One trailing newline is what editors and `echo` add; anything else is part of the secret.
  const v = text.replace(/\r?\n$/, '');
  if (v.length === 0) throw new SecretError(`secret file ${source.file} is empty`);
  return v;
}
