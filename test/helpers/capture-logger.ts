/** A logger whose JSON lines a test can search (for recovery events, warnings and for leaks). */
import { Writable } from 'node:stream';
import winston from 'winston';
import type { AppLogger } from '../../src/log/logger';

export function captureLogger(): { log: AppLogger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString('utf8'));
      cb();
    },
  });
  const log = winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] });
  return { log, lines };
}
