/**
 * The application (debug) log: winston, JSON lines on stderr. The per-request log is a separate
 * stream (request-log.ts). Callers pass metadata objects built from allow-listed fields only:
 * never plaintext, ciphertext, AAD, PINs, secrets, signatures or the Authorization header.
 */
import winston from 'winston';

export type AppLogger = winston.Logger;

export function createAppLogger(level: string = 'info'): AppLogger {
  return winston.createLogger({
    level,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
}

/** A logger that drops everything, for tests and CLI commands that must stay quiet. */
export function createSilentLogger(): AppLogger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });
}
