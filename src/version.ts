import fs from 'node:fs';
import path from 'node:path';

/** The product version from package.json (dist/src/version.js -> ../../package.json). */
export const VERSION: string = (() => {
  for (const p of [path.resolve(__dirname, '../../package.json'), path.resolve(__dirname, '../package.json')]) {
    try {
      return (JSON.parse(fs.readFileSync(p, 'utf8')) as { version: string }).version;
    } catch {
      /* try the next location */
    }
  }
  return '0.0.0';
})();
