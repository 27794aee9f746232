/**
 * A lock held for a process's lifetime (e.g. on the audit log, which one writer must own: two
 * writers would interleave two hash chains and make an intact log look tampered with).
 * The lock file holds the holder's pid; a lock whose holder is no longer running is taken over.
 */
import fs from 'node:fs';

export interface ProcessLock {
  release(): void;
}

/** Whether a process with this pid is running (EPERM: it exists but belongs to someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquireProcessLock(lockFile: string, what: string): ProcessLock {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(lockFile, 'wx', 0o600);
      fs.writeSync(fd, JSON.stringify({ pid: process.pid, since: new Date().toISOString() }));
      fs.closeSync(fd);
      return {
        release: () => {
          try {
            const holder = JSON.parse(fs.readFileSync(lockFile, 'utf8')) as { pid?: number };
            if (holder.pid === process.pid) fs.rmSync(lockFile, { force: true });
          } catch {
            /* already gone */
          }
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let pid: number | undefined;
    try {
      pid = (JSON.parse(fs.readFileSync(lockFile, 'utf8')) as { pid?: number }).pid;
    } catch {
      pid = undefined; // half-written by a writer that died at once: stale
    }
    if (pid !== undefined && pid !== process.pid && processAlive(pid)) {
      throw new Error(`${what} is in use by process ${pid} (lock ${lockFile}); only one proxy may write it`);
    }
    fs.rmSync(lockFile, { force: true });
  }
  throw new Error(`could not take the lock ${lockFile}`);
}
