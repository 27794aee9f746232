/**
 * `xks-proxy audit keygen|verify`: the audit signing key pair, and end-to-end verification of the
 * audit log (src/audit/verify.ts) for operators and auditors.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { rotatedFiles } from '../audit/audit-log';
import { generateSigningKeyPair, loadVerificationKey, type CheckpointAlg } from '../audit/signing';
import { formatReport, verifyAuditFiles } from '../audit/verify';
import { configPathFrom, loadConfig } from '../config/load';
import { reconcileCommand } from './reconcile-command';

export const AUDIT_USAGE = `Usage:
  xks-proxy audit reconcile --cloudtrail FILE|DIR ... (see xks-proxy audit reconcile --help)
  xks-proxy audit keygen [--private FILE] [--public FILE] [--alg EdDSA|ES256] [--config FILE]
  xks-proxy audit verify --public-key FILE [--witness FILE ...] [--expect-seq N] [--partial] [--json]
                         [FILE|DIR ...] [--config FILE]

keygen: a new audit signing key pair as JWK files: the private key (mode 0600, default: the config's
        audit.signingKeyFile) signs checkpoints; the public key (default: the same name with
        .pub.jwk) goes to the auditor. Never overwrites an existing file.
verify: checks audit files end to end: every record's hash, the chain of prevHash links, seq
        continuity across rotated files, and every checkpoint's signature. Reports the first
        modified, deleted, inserted or reordered record, a bad signature, a torn last line, or
        records after the last checkpoint. Without files: the config's audit.file and its rotated
        files (and audit.witnessFile as the witness). DIR means every *.log file in it. --partial
        accepts a log that starts mid-chain.
        --witness FILE: copies of the checkpoint lines kept elsewhere (audit.witnessFile, or a
        shipped copy of the stdout stream; other lines are ignored). The log must reach the newest
        checkpoint they hold: a deleted newest file or a file cut after a checkpoint is found.
        --expect-seq N: the log must reach seq N (e.g. xks_audit_last_checkpoint_seq).
        Exit status: 0 intact and fully signed; 1 tampering or corruption; 2 usage error;
        3 records after the last checkpoint (not covered by a signature); 4 torn last line;
        5 truncated (the log ends before what the witness or --expect-seq shows was written).`;

function usageError(msg: string): number {
  process.stderr.write(`error: ${msg}\n\n${AUDIT_USAGE}\n`);
  return 2;
}

export async function auditCommand(argv: string[]): Promise<number> {
  // reconcile has options of its own; it parses them itself.
  if (argv[0] === 'reconcile') return reconcileCommand(argv.slice(1));
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      private: { type: 'string' },
      public: { type: 'string' },
      alg: { type: 'string' },
      'public-key': { type: 'string' },
      witness: { type: 'string', multiple: true },
      'expect-seq': { type: 'string' },
      partial: { type: 'boolean' },
      json: { type: 'boolean' },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  const sub = positionals[0];
  if (values.help || !sub) {
    (values.help ? process.stdout : process.stderr).write(AUDIT_USAGE + '\n');
    return values.help ? 0 : 2;
  }
  const auditConfig = () => loadConfig(configPathFrom(values.config)).config.audit;

  if (sub === 'keygen') {
    const alg = (values.alg ?? 'EdDSA') as CheckpointAlg;
    if (alg !== 'EdDSA' && alg !== 'ES256') return usageError('--alg must be EdDSA or ES256');
    const priv = values.private ?? auditConfig().signingKeyFile;
    if (!priv) return usageError('--private is required (the config has no audit.signingKeyFile)');
    const pub = values.public ?? priv.replace(/(\.private)?(\.jwk|\.json)?$/, '') + '.pub.jwk';
    if (path.resolve(pub) === path.resolve(priv)) return usageError('--public must differ from --private');
    const { kid } = await generateSigningKeyPair(priv, pub, alg);
    process.stdout.write(`audit signing key ${kid} (${alg})\n  private: ${priv}\n  public:  ${pub}  (give this one to the auditor)\n`);
    return 0;
  }
  if (sub === 'verify') {
    if (!values['public-key']) return usageError('--public-key is required');
    let inputs = positionals.slice(1);
    let witnessFiles = values.witness ?? [];
    if (inputs.length === 0) {
      const cfg = auditConfig();
      if (!cfg.file) return usageError('no files given and the config has no audit.file');
      inputs = [...rotatedFiles(cfg.file), cfg.file];
      if (witnessFiles.length === 0 && cfg.witnessFile) witnessFiles = [cfg.witnessFile];
    }
    let expectSeq: number | undefined;
    if (values['expect-seq'] !== undefined) {
      expectSeq = Number(values['expect-seq']);
      if (!Number.isSafeInteger(expectSeq) || expectSeq < 0) return usageError('--expect-seq must be a non-negative integer');
    }
    const key = await loadVerificationKey(values['public-key']);
    const report = await verifyAuditFiles(inputs, key, { partial: values.partial ?? false, witnessFiles, ...(expectSeq !== undefined ? { expectSeq } : {}) });
    process.stdout.write((values.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n');
    return report.exitCode;
  }
  return usageError(`unknown subcommand ${sub}`);
}
