/**
 * Translation of the AWS sample XKS proxy's TOML settings into this proxy's configuration, for
 * `xks-proxy import-config` (operators leaving the sample for this proxy on the same HSM keys).
 *
 * Pure: it takes the parsed TOML and returns the configuration object, the secret files to write
 * (SigV4 secrets, the HSM PIN) and a report of every setting, each marked as translated, changed
 * in meaning, or not translated and why. Secrets only ever go into `files`, never into the report.
 */
import path from 'node:path';

export interface ImportOptions {
  /** Folder the generated configuration and secret files go to. */
  outDir: string;
  /** Folder of the settings file: the sample's relative paths are resolved against it. */
  settingsDir: string;
  /** The token to use: the sample settings do not name one. */
  tokenLabel: string;
  /** Environment the PKCS#11 module needs (e.g. SOFTHSM2_CONF), from the operator. */
  moduleEnv?: Record<string, string>;
}

export type ReportLevel = 'translated' | 'changed' | 'not-translated';

export interface ReportLine {
  setting: string;
  level: ReportLevel;
  note: string;
}

export interface ImportResult {
  config: Record<string, unknown>;
  /** Files to write with mode 0600, relative to outDir. */
  secretFiles: { path: string; content: string }[];
  report: ReportLine[];
}

type Table = Record<string, unknown>;

const ACCESS_KEY_ID_RE = /^[A-Z2-7]{20,30}$/;
const SECRET_RE = /^[A-Za-z0-9/+=]{43,64}$/;
const TRACE_LEVELS: Record<string, string> = { TRACE: 'debug', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' };

function table(v: unknown): Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Table) : {};
}

/** A key store name from a URI path prefix ("/example/prefix" -> "example-prefix", "" -> "default"). */
export function keyStoreName(prefix: string, taken: Set<string>): string {
  const base = prefix.replace(/^\/+/, '').replace(/[^A-Za-z0-9_-]+/g, '-').slice(0, 56) || 'default';
  let name = base;
  for (let i = 2; taken.has(name); i++) name = `${base}-${i}`;
  taken.add(name);
  return name;
}

export function translateSampleSettings(raw: Table, opts: ImportOptions): ImportResult {
  const report: ReportLine[] = [];
  const say = (setting: string, level: ReportLevel, note: string) => report.push({ setting, level, note });
  const seen = new Set<string>();
  const get = (section: string, key: string): unknown => {
    seen.add(`${section}.${key}`);
    return table(raw[section])[key];
  };
  const abs = (p: string) => path.resolve(opts.settingsDir, p);
  const secretFiles: ImportResult['secretFiles'] = [];

  // --- server and TLS ---------------------------------------------------------------------------
  const server: Table = { host: String(get('server', 'ip') ?? '0.0.0.0'), port: Number(get('server', 'port') ?? 443) };
  say('server.ip, server.port', 'translated', `server.host ${server.host}, server.port ${server.port}`);
  const tlsOn = get('security', 'is_tls_enabled') !== false;
  if (tlsOn) {
    const cert = get('tls', 'tls_cert_pem');
    const key = get('tls', 'tls_key_pem');
    server.tls = { certFile: abs(String(cert ?? 'tls/server_cert.pem')), keyFile: abs(String(key ?? 'tls/server_key.pem')) };
    say('tls.tls_cert_pem, tls.tls_key_pem', 'translated', 'server.tls.certFile/keyFile (absolute: the sample read them relative to its working folder)');
  } else {
    server.plainHttp = true;
    say('security.is_tls_enabled', 'changed', 'false: server.plainHttp true. KMS only calls HTTPS endpoints: put TLS in front or turn it on before production');
  }
  if (get('security', 'is_mtls_enabled') === true) {
    const ca = get('tls', 'mtls_client_ca_pem');
    const name = get('tls', 'mtls_client_dns_name');
    (server.tls as Table).clientAuth = { caFile: abs(String(ca ?? 'tls/client_ca.pem')), allowedSubjects: [String(name ?? 'cks.kms.*.amazonaws.com')] };
    say('tls.mtls_client_ca_pem, tls.mtls_client_dns_name', 'changed', 'server.tls.clientAuth: the name is matched against the client certificate subject CN (KMS presents CN=cks.kms.<region>.amazonaws.com); check docs/mtls.md');
  } else {
    get('tls', 'mtls_client_ca_pem');
    get('tls', 'mtls_client_dns_name');
  }
  if (get('security', 'is_sigv4_auth_enabled') === false) say('security.is_sigv4_auth_enabled', 'changed', 'false in the sample: this proxy always verifies SigV4 (the spec requires it)');
  const region = get('server', 'region');
  if (region !== undefined) say('server.region', 'not-translated', 'not needed: requests signed for any region verify');
  const service = get('server', 'service');
  if (service !== undefined && service !== 'kms-xks-proxy') say('server.service', 'changed', `"${String(service)}": this proxy accepts the spec's service name kms-xks-proxy only`);
  const ping = get('server', 'port_http_ping');
  const healthEndpoints: Table = {};
  if (ping !== undefined) {
    healthEndpoints.plainPort = Number(ping);
    say('server.port_http_ping', 'changed', `healthEndpoints.plainPort ${String(ping)}: the load balancer must probe GET /healthz/ready (or /healthz/live) instead of the sample's ping path`);
  }
  if (get('server', 'ciphertext_metadata_b64') !== undefined) {
    say('server.ciphertext_metadata_b64', 'not-translated', 'this proxy does not add fixed ciphertext metadata to new ciphertexts; ciphertexts that carry it still decrypt, since KMS hands the metadata back and it is part of the AAD');
  }
  if (raw.server && table(raw.server).tcp_keepalive !== undefined) {
    seen.add('server.tcp_keepalive');
    say('server.tcp_keepalive', 'not-translated', 'the proxy keeps HTTP connections alive itself (server.keepAliveTimeoutMs); OS TCP keepalive is not set per socket');
  }

  // --- logging ------------------------------------------------------------------------------------
  const level = get('tracing', 'level');
  const log: Table = { level: TRACE_LEVELS[String(level ?? 'INFO').toUpperCase()] ?? 'info' };
  say('tracing.level', 'translated', `log.level ${String(log.level)}`);
  for (const k of ['is_stdout_writer_enabled', 'is_file_writer_enabled', 'directory', 'file_prefix', 'rotation_kind']) get('tracing', k);
  say('tracing (file writer, directory, rotation)', 'changed', 'the request log and the tamper-evident audit log replace the trace files: set log.requestLogFile, or audit.file with a signing key (xks-proxy audit keygen); see docs/observability.md');

  // --- secondary authorization --------------------------------------------------------------------
  if (get('security', 'secondary_auth') !== undefined || raw.security && table(raw.security).oso !== undefined) {
    seen.add('security.oso');
    say('security.secondary_auth (Oso policy)', 'not-translated', 'rewrite the rules as this proxy\'s allowlist policies (docs/runbook-policies.md); until then no secondary authorization applies');
  }

  // --- key stores -------------------------------------------------------------------------------
  const names = new Set<string>();
  const stores = Array.isArray(raw.external_key_stores) ? (raw.external_key_stores as unknown[]) : [];
  seen.add('external_key_stores');
  const keyStores = stores.map((s, i) => {
    const ks = table(s);
    const prefix = String(ks.uri_path_prefix ?? '');
    const name = keyStoreName(prefix, names);
    const credentialsDir = path.join('credentials', name);
    const akid = String(ks.sigv4_access_key_id ?? '');
    const secret = String(ks.sigv4_secret_access_key ?? '');
    const at = `external_key_stores[${i}]`;
    if (ACCESS_KEY_ID_RE.test(akid) && SECRET_RE.test(secret)) {
      secretFiles.push({ path: path.join(credentialsDir, `${akid}.secret`), content: secret + '\n' });
      say(`${at}.sigv4_access_key_id/secret`, 'translated', `credential ${akid} in ${credentialsDir}/ (mode 0600): KMS keeps working with the credential it holds`);
    } else {
      say(`${at}.sigv4_access_key_id/secret`, 'not-translated', `missing or not of the spec's form (access key id: 20-30 of A-Z2-7; secret: 43-64 of A-Za-z0-9/+=): create one with xks-proxy credentials new --key-store ${name} and update the store in KMS`);
    }
    const ids = Array.isArray(ks.xks_key_id_set) ? ks.xks_key_id_set.map(String) : [];
    say(`${at}`, 'translated', `key store "${name}", pathPrefix "${prefix}", ${ids.length} keys (the sample's key id is the key's PKCS#11 label, as here)`);
    say(`${at} (ciphertexts)`, 'changed', `compatibility: aws-sample, so that Decrypt accepts what the sample sealed (it hashed the AAD); watch xks_aws_sample_aad_decrypts_total{key_store="${name}"} and set it back to spec once it stays flat`);
    return { name, pathPrefix: prefix, credentialsDir, compatibility: 'aws-sample', keys: ids.map((externalKeyId) => ({ externalKeyId })) };
  });

  // --- PKCS#11 ------------------------------------------------------------------------------------
  let module = String(get('pkcs11', 'PKCS11_HSM_MODULE') ?? '');
  const realLib = table(raw.pkcs11_logger).PKCS11_LOGGER_LIBRARY_PATH;
  if (raw.pkcs11_logger !== undefined) {
    seen.add('pkcs11_logger');
    if (typeof realLib === 'string' && realLib.length > 0) {
      module = realLib;
      say('pkcs11_logger', 'changed', `the sample ran through a PKCS#11 logging shim; hsm.module is the real library ${realLib}`);
    } else say('pkcs11_logger', 'not-translated', 'PKCS#11 call logging is not part of this proxy; metrics time every HSM call');
  }
  say('pkcs11.PKCS11_HSM_MODULE', module ? 'translated' : 'not-translated', module ? `hsm.module ${module}` : 'missing: set hsm.module');
  const poolSize = Math.min(256, Math.max(1, Number(get('pkcs11', 'session_pool_max_size') ?? 4)));
  say('pkcs11.session_pool_max_size', 'translated', `hsm.pool.size ${poolSize}`);
  const poolTimeout = Number(get('pkcs11', 'session_pool_timeout_milli') ?? 0);
  const acquireTimeoutMs = poolTimeout > 0 ? Math.min(60000, poolTimeout) : 100;
  say('pkcs11.session_pool_timeout_milli', 'changed', `hsm.pool.acquireTimeoutMs ${acquireTimeoutMs}${poolTimeout > 0 ? '' : ' (0 meant no bound in the sample; a bound inside KMS\'s 250 ms budget answers DependencyTimeoutException instead of a KMS timeout)'}`);
  const pin = get('pkcs11', 'user_pin');
  if (typeof pin === 'string' && pin.length > 0) {
    secretFiles.push({ path: path.join('secrets', 'hsm-pin'), content: pin + '\n' });
    say('pkcs11.user_pin', 'changed', 'moved out of the configuration into secrets/hsm-pin (mode 0600), read as hsm.pin {file}; delete it from the old settings file');
  } else say('pkcs11.user_pin', 'not-translated', 'missing: write the PIN to secrets/hsm-pin (mode 0600)');
  for (const k of ['session_eager_close', 'context_read_timeout_milli']) {
    if (get('pkcs11', k) !== undefined) say(`pkcs11.${k}`, 'not-translated', 'not needed: sessions stay open in the pool and a failed HSM link is re-initialised by the proxy');
  }
  say('(token)', 'changed', `the sample settings name no token; hsm.tokenLabel "${opts.tokenLabel}" (the token is found by label, never by slot)`);
  say('(health key)', 'changed', 'this proxy\'s deep health check encrypts with a key of its own: create it with xks-proxy keys create --label xks-health (hsm.healthKeyLabel)');

  // --- HSM capabilities -> who makes the GCM IV -------------------------------------------------
  const canGenerateIv = get('hsm_capabilities', 'can_generate_iv') === true;
  const zeroIv = get('hsm_capabilities', 'is_zero_iv_required') === true;
  const ivMode = !canGenerateIv ? 'proxy' : zeroIv ? 'hsm-params' : 'hsm-appended';
  say('hsm_capabilities', 'translated', `hsm.ivMode ${ivMode} (docs/hsm-profiles.md)`);

  // --- limits ------------------------------------------------------------------------------------
  const b64Bytes = (v: unknown, min: number) => Math.min(65536, Math.max(min, Math.floor((Number(v ?? 0) * 3) / 4)));
  const limits = { maxPlaintextBytes: b64Bytes(get('limits', 'max_plaintext_in_base64'), 4300), maxAadBytes: b64Bytes(get('limits', 'max_aad_in_base64'), 8192) };
  say('limits', 'translated', `limits.maxPlaintextBytes ${limits.maxPlaintextBytes}, limits.maxAadBytes ${limits.maxAadBytes} (decoded bytes; the sample counted Base64 characters; never below the spec's minimums)`);

  // Anything else the file had: named, so that nothing is dropped silently.
  for (const [section, v] of Object.entries(raw)) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      if (!seen.has(section)) say(section, 'not-translated', 'unknown setting');
      continue;
    }
    for (const key of Object.keys(v as Table)) if (!seen.has(`${section}.${key}`) && !seen.has(section)) say(`${section}.${key}`, 'not-translated', 'unknown setting');
  }

  const config: Table = {
    server,
    ...(Object.keys(healthEndpoints).length ? { healthEndpoints } : {}),
    hsm: {
      module,
      ...(opts.moduleEnv && Object.keys(opts.moduleEnv).length ? { moduleEnv: opts.moduleEnv } : {}),
      tokenLabel: opts.tokenLabel,
      pin: { file: path.join('secrets', 'hsm-pin') },
      pool: { size: poolSize, acquireTimeoutMs },
      healthKeyLabel: 'xks-health',
      ivMode,
    },
    keyStores,
    limits,
    log,
  };
  return { config, secretFiles, report };
}

export function formatImportReport(report: readonly ReportLine[]): string {
  const mark: Record<ReportLevel, string> = { translated: 'ok  ', changed: 'NOTE', 'not-translated': 'TODO' };
  return report.map((r) => `${mark[r.level]}  ${r.setting}: ${r.note}`).join('\n');
}
