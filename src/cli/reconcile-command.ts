/**
 * `xks-proxy audit reconcile`: the proxy's audit log against CloudTrail (src/audit/reconcile.ts).
 */
import { parseArgs } from 'node:util';
import { rotatedFiles } from '../audit/audit-log';
import { readCloudTrail } from '../audit/cloudtrail';
import { auditLogFiles, formatReconcileReport, readProxyOperations, reconcile } from '../audit/reconcile';
import { configPathFrom, loadConfig } from '../config/load';
import path from 'node:path';

export const RECONCILE_USAGE = `Usage:
  xks-proxy audit reconcile --cloudtrail FILE|DIR [--cloudtrail ...] [--audit FILE|DIR ...]
        [--from ISO] [--to ISO] [--slack-minutes N] [--key-arn ARN ...] [--custom-key-store-id cks-... ...]
        [--json] [--config FILE]

Joins the proxy's audit log and AWS CloudTrail event files (JSON or gzip, as CloudTrail delivers
them; a folder is read recursively) on KMS's request id (requestMetadata.kmsRequestId = CloudTrail
requestID) and reports:
  - HSM operations the proxy performed (Encrypt, Decrypt, GetKeyMetadata answered 200) with no KMS
    event: a caller other than KMS, or CloudTrail files missing from the input;
  - mismatches in key ARN, KMS operation or principal between the two records of one request;
  - successful KMS events on this store's keys (the key ARNs in the audit log, --key-arn, or events
    tagged with --custom-key-store-id) with no proxy record.
Without --audit: the config's audit.file, its rotated files and its workers' (worker-N/).
Default range: where both inputs have records, less --slack-minutes (default 15, CloudTrail's
delivery delay) at both ends. Run \`audit verify\` first: reconcile trusts the files it reads.
Exit status: 0 reconciled; 1 proxy operations with no KMS event; 2 usage error or unreadable input;
3 mismatches; 4 KMS events with no proxy record; 5 nothing to compare.`;

function usageError(msg: string): number {
  process.stderr.write(`error: ${msg}\n\n${RECONCILE_USAGE}\n`);
  return 2;
}

function time(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new Error(`${name} is not a date: ${v}`);
  return t;
}

export function reconcileCommand(argv: string[]): number {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        cloudtrail: { type: 'string', multiple: true },
        audit: { type: 'string', multiple: true },
        from: { type: 'string' },
        to: { type: 'string' },
        'slack-minutes': { type: 'string' },
        'key-arn': { type: 'string', multiple: true },
        'custom-key-store-id': { type: 'string', multiple: true },
        json: { type: 'boolean' },
        config: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    return usageError((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(RECONCILE_USAGE + '\n');
    return 0;
  }
  if (!values.cloudtrail?.length) return usageError('--cloudtrail is required');
  try {
    let auditInputs = values.audit ?? [];
    if (auditInputs.length === 0) {
      const file = loadConfig(configPathFrom(values.config)).config.audit.file;
      if (!file) return usageError('no --audit given and the config has no audit.file');
      auditInputs = [...rotatedFiles(file), file, path.dirname(file)].filter((p, i, all) => all.indexOf(p) === i);
    }
    const files = [...new Set(auditInputs.flatMap(auditLogFiles))];
    const slack = values['slack-minutes'] === undefined ? undefined : Number(values['slack-minutes']);
    if (slack !== undefined && !(slack >= 0)) return usageError('--slack-minutes must be a number >= 0');
    const trail = readCloudTrail(values.cloudtrail);
    const report = reconcile(readProxyOperations(files), trail.events, {
      from: time(values.from, '--from'),
      to: time(values.to, '--to'),
      slackMs: slack === undefined ? undefined : slack * 60_000,
      keyArns: values['key-arn'],
      customKeyStoreIds: values['custom-key-store-id'],
    });
    const out = values.json ? JSON.stringify({ ...report, auditFiles: files, cloudTrailFiles: trail.files }, null, 2) : formatReconcileReport(report);
    process.stdout.write(out + '\n');
    return report.exitCode;
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message}\n`);
    return 2;
  }
}
