/**
 * Choosing the audit stream at start-up: the tamper-evident audit log when audit.file is set,
 * else the plain request log of log.requestLogFile / log.requestLogStdout (unchanged behaviour).
 * Either way the result is an AuditSink, so admin actions always have somewhere to go.
 */
import type { Config } from '../config/schema';
import type { AppLogger } from '../log/logger';
import { createRequestLog, type RequestLog } from '../log/request-log';
import { openAuditLog } from './audit-log';
import { adminFields, type AuditSink } from './records';

export function openRequestOrAuditLog(config: Readonly<Config>, log: AppLogger): RequestLog & AuditSink {
  if (config.audit.file) {
    if (config.log.requestLogFile) log.warn('audit.file is set: the audit log replaces log.requestLogFile, which is not written', { requestLogFile: config.log.requestLogFile });
    return openAuditLog(config.audit, log);
  }
  return asAuditSink(createRequestLog({ stdout: config.log.requestLogStdout, file: config.log.requestLogFile }), log);
}

/** A RequestLog that is not an AuditSink gets admin actions written to the application log. */
export function asAuditSink(requestLog: RequestLog, log: AppLogger): AuditSink {
  const maybe = requestLog as Partial<AuditSink>;
  if (typeof maybe.writeAdmin === 'function') return requestLog as AuditSink;
  return {
    write: (r) => requestLog.write(r),
    commit: (r) => requestLog.commit(r),
    close: () => requestLog.close(),
    writeAdmin: (a) => log.info('admin action (no audit log configured)', adminFields(a)),
  };
}
