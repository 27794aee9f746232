/**
 * The cores this process may use, for server.workers: auto. os.availableParallelism() follows the
 * CPU affinity but not a container's CPU quota (cgroup v2 cpu.max, v1 cfs_quota): a container
 * limited to 2 CPUs on a 64-core host would otherwise fork 64 workers, each with its own HSM
 * sessions. The quota, rounded up, caps it.
 */
import fs from 'node:fs';
import os from 'node:os';

/** CPUs allowed by the cgroup CPU quota, or undefined when there is none (or it is unreadable). */
export function cgroupCpuLimit(read: (file: string) => string | undefined = readFile): number | undefined {
  const v2 = read('/sys/fs/cgroup/cpu.max')?.trim().split(/\s+/);
  if (v2 && v2[0] !== 'max' && v2.length === 2) return ratio(Number(v2[0]), Number(v2[1]));
  const quota = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')?.trim());
  const period = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_period_us')?.trim());
  return quota > 0 ? ratio(quota, period) : undefined;
}

function ratio(quota: number, period: number): number | undefined {
  return quota > 0 && period > 0 ? Math.max(1, Math.ceil(quota / period)) : undefined;
}

function readFile(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** server.workers: auto: one worker per core this process may use (at most 64, the setting's bound). */
export function autoWorkers(cores = os.availableParallelism(), quota = cgroupCpuLimit()): number {
  return Math.max(1, Math.min(64, cores, quota ?? Infinity));
}
