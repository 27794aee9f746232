/**
 * `xks-proxy check <url>`: conformance and latency check of any XKS proxy.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { formatHsmMetrics, readHsmMetrics } from '../checker/hsm-metrics';
import { formatReport, runChecks } from '../checker/run';

export const CHECK_USAGE = `Usage: xks-proxy check <XksProxyUriEndpoint + XksProxyUriPath> --key-id ID
         (--kms-config FILE | --access-key-id AKID --secret-file FILE) [--region us-east-1]
         [--ca FILE | --insecure] [--client-cert FILE --client-key FILE] [--ciphertexts-from URL]
         [--metrics URL] [--json]

Runs positive and negative cases of the XKS proxy API v1 against a proxy (ours or another) with the
given SigV4 credential: the four APIs, CDIV, tampering, authentication, URI and method errors. Prints
pass/fail per case and each call's latency against KMS's 250 ms budget, TLS handshake included.
The URL is e.g. https://xks.example.com/demo/kms/xks/v1. --kms-config takes the KMS console proxy
configuration JSON (as made by "credentials new"). --ciphertexts-from URL adds a migration case:
the proxy at URL (the one being replaced, same credential and keys) encrypts, this one decrypts.
--metrics URL (our proxy's /metrics, e.g. http://127.0.0.1:9464/metrics) adds the HSM call time the
proxy measured (without TLS, SigV4 and the network) and whether it can carry KMS's 1800 req/s.
Exit 0 when every case passes.`;

export async function checkCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'key-id': { type: 'string' },
      'kms-config': { type: 'string' },
      'access-key-id': { type: 'string' },
      'secret-file': { type: 'string' },
      region: { type: 'string', default: 'us-east-1' },
      ca: { type: 'string' },
      insecure: { type: 'boolean' },
      'client-cert': { type: 'string' },
      'client-key': { type: 'string' },
      'ciphertexts-from': { type: 'string' },
      metrics: { type: 'string' },
      json: { type: 'boolean' },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(CHECK_USAGE + '\n');
    return 0;
  }
  const url = positionals[0];
  let accessKeyId = values['access-key-id'];
  let secret = values['secret-file'] ? fs.readFileSync(values['secret-file'], 'utf8').trim() : undefined;
  if (values['kms-config']) {
    const k = JSON.parse(fs.readFileSync(values['kms-config'], 'utf8')) as { XksProxyAuthenticationCredential: { AccessKeyId: string; RawSecretAccessKey: string } };
    accessKeyId = k.XksProxyAuthenticationCredential.AccessKeyId;
    secret = k.XksProxyAuthenticationCredential.RawSecretAccessKey;
  }
  if (!url || !values['key-id'] || !accessKeyId || !secret) {
    process.stderr.write(`error: the URL, --key-id and a credential are required\n\n${CHECK_USAGE}\n`);
    return 2;
  }
  const report = await runChecks({
    baseUrl: url,
    keyId: values['key-id'],
    accessKeyId,
    secret,
    region: values.region!,
    ca: values.ca ? fs.readFileSync(values.ca) : undefined,
    insecure: values.insecure ?? false,
    cert: values['client-cert'] ? fs.readFileSync(values['client-cert']) : undefined,
    key: values['client-key'] ? fs.readFileSync(values['client-key']) : undefined,
    ciphertextsFrom: values['ciphertexts-from'],
  });
  const tlsOpts = { ca: values.ca ? fs.readFileSync(values.ca) : undefined, insecure: values.insecure ?? false };
  const hsm = values.metrics ? await readHsmMetrics(values.metrics, tlsOpts) : undefined;
  const text = values.json ? JSON.stringify(hsm ? { ...report, hsm } : report, null, 2) : formatReport(report) + (hsm ? `\n${formatHsmMetrics(hsm)}` : '');
  process.stdout.write(text + '\n');
  return report.failed === 0 ? 0 : 1;
}
