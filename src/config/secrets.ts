/**
 * Reading PINs and SigV4 secrets: from an environment variable or a secret file, never from the
 * config file itself. Errors name the source (variable or path), never the value.
 *
 * Files that hold secrets (the HSM PIN, SigV4 secrets, the audit signing key, operator private
 * keys) must be private to the user that reads them: a PIN readable by every local account is no
 * PIN. A file with any group or other permission is refused, with the chmod that fixes it; so is a
 * folder holding one that others may write to (they could swap the file; sticky folders such as
 * /tmp excepted, where only the owner may replace it), and a credentials folder others may write
 * to at all (a new file there is a new credential). Files that only need integrity (the operator
 * JWKS: public keys, but a key added there is a new operator) must not be writable by others.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Config, SecretSource } from './schema';

export class SecretError extends Error {}

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, '0');
/** Quote a path for the shell command in a message, only when it needs it. */
const sh = (p: string) => (/^[A-Za-z0-9_./@%+=:,-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`);

function folderProblem(dir: string, what: string, holdsCredentials: boolean): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    return undefined; // a missing folder is reported by whoever reads it
  }
  const othersWrite = (st.mode & 0o022) !== 0;
  const sticky = (st.mode & 0o1000) !== 0;
  if (!othersWrite || (sticky && !holdsCredentials)) return undefined;
  const why = holdsCredentials ? 'anyone who may write there can add a credential' : `anyone who may write there can replace ${what}`;
  return `the folder ${dir} (holding ${what}) is writable by group or others (mode ${octal(st.mode)}): ${why}; run: chmod go-w ${sh(dir)}`;
}

/** The file itself has group or other permissions (undefined when fine or missing). */
function fileModeProblem(file: string, what: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return undefined; // a missing file is reported by whoever reads it, with its own message
  }
  if ((st.mode & 0o077) !== 0) return `${what} ${file} is accessible to group or others (mode ${octal(st.mode)}); run: chmod 600 ${sh(file)}`;
  return undefined;
}

/** Why `file` is not private enough to hold a secret (undefined when it is fine or missing). */
export function privateFileProblem(file: string, what: string): string | undefined {
  if (!fs.existsSync(file)) return undefined;
  return fileModeProblem(file, what) ?? folderProblem(path.dirname(file), what, false);
}

/** Throws SecretError when `file` is not private to its owner (see privateFileProblem). */
export function assertPrivateFile(file: string, what: string): void {
  const problem = privateFileProblem(file, what);
  if (problem) throw new SecretError(problem);
}

/** Files that others may read but must not change (public keys that grant access). */
function integrityFileProblem(file: string, what: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return undefined;
  }
  if ((st.mode & 0o022) !== 0) return `${what} ${file} is writable by group or others (mode ${octal(st.mode)}): anyone who may write it can add an operator; run: chmod go-w ${sh(file)}`;
  return folderProblem(path.dirname(file), what, false);
}

/** The *.secret files of a credentials folder (the registry's naming). */
export const SECRET_FILE_SUFFIX = '.secret';

/**
 * Every secret file the configuration names, checked at start-up and at each reload (a reload
 * with a bad file is refused and the running configuration stays). One line per problem, with the
 * setting that names the file.
 */
export function secretFileProblems(c: Readonly<Config>): string[] {
  const out: (string | undefined)[] = [];
  if (c.hsm.pin.file !== undefined) out.push(privateFileProblem(c.hsm.pin.file, 'the HSM PIN file (hsm.pin.file)'));
  c.keyStores.forEach((ks, i) => {
    ks.credentials.forEach((cr, j) => {
      if (cr.secret.file !== undefined) out.push(privateFileProblem(cr.secret.file, `the SigV4 secret file of key store ${ks.name} (keyStores.${i}.credentials.${j}.secret.file)`));
    });
    if (ks.credentialsDir !== undefined) {
      const what = `the credentials folder of key store ${ks.name} (keyStores.${i}.credentialsDir)`;
      out.push(folderProblem(ks.credentialsDir, what, true));
      let names: string[] = [];
      try {
        names = fs.readdirSync(ks.credentialsDir);
      } catch {
        // reported by the registry when it reads the folder
      }
      // The folder is checked once above, as a credentials folder.
      for (const n of names.filter((x) => x.endsWith(SECRET_FILE_SUFFIX)).sort()) out.push(fileModeProblem(path.join(ks.credentialsDir, n), `the SigV4 secret file of key store ${ks.name}`));
    }
  });
  if (c.audit.signingKeyFile !== undefined) out.push(privateFileProblem(c.audit.signingKeyFile, 'the audit signing key (audit.signingKeyFile)'));
  // A TLS private key readable by another local account lets it impersonate this proxy to KMS (or
  // an admin listener, or this proxy to etcd) for as long as the certificate lives.
  if (c.server.tls !== undefined && !c.server.plainHttp) out.push(privateFileProblem(c.server.tls.keyFile, 'the TLS private key (server.tls.keyFile)'));
  const admin = c.control?.admin;
  if (admin?.enabled && admin.tls !== undefined) out.push(privateFileProblem(admin.tls.keyFile, 'the admin listener TLS private key (control.admin.tls.keyFile)'));
  const etcd = c.control?.store === 'etcd' ? c.control.etcd : undefined;
  if (etcd?.tls?.keyFile !== undefined) out.push(privateFileProblem(etcd.tls.keyFile, 'the etcd client key (control.etcd.tls.keyFile)'));
  if (etcd?.auth !== undefined) out.push(privateFileProblem(etcd.auth.passwordFile, 'the etcd password file (control.etcd.auth.passwordFile)'));
  const jwks = c.control?.admin?.jwksFile;
  if (jwks !== undefined) out.push(integrityFileProblem(jwks, 'the operator JWKS (control.admin.jwksFile)'));
  return out.filter((p): p is string => p !== undefined);
}

export function readSecret(source: SecretSource, env: NodeJS.ProcessEnv = process.env): string {
  if (source.env !== undefined) {
    const v = env[source.env];
    if (v === undefined || v.length === 0) throw new SecretError(`environment variable ${source.env} is not set or empty`);
    return v;
  }
  if (source.file === undefined) throw new SecretError('secret source names neither env nor file');
  assertPrivateFile(source.file, 'secret file');
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
