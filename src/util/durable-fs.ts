/**
 * Durability helpers: after a rename or unlink, fsync the folder so that the change itself
 * survives a crash or power loss, not only the file's bytes.
 */
import fs from 'node:fs';

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
