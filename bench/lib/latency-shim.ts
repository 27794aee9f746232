/**
 * The emulated network HSM (latency-shim.c): compiles the shim once per source version into the
 * temp folder and gives the hsm.module / hsm.moduleEnv that put it in front of the real SoftHSM2
 * module. The proxy itself runs unchanged: it loads the shim as its PKCS#11 module.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const SOURCE = path.resolve(__dirname, '../../../bench/lib/latency-shim.c');
const PKCS11_HEADERS = path.dirname(require.resolve('pkcs11js/includes/pkcs11/pkcs11.h'));

/** Path of the compiled shim; throws with the compiler's message when it cannot be built. */
export function latencyShimModule(): string {
  const src = fs.readFileSync(SOURCE);
  const hash = crypto.createHash('sha256').update(src).digest('hex').slice(0, 16);
  const out = path.join(os.tmpdir(), `xks-latency-shim-${hash}.so`);
  if (fs.existsSync(out)) return out;
  const tmp = `${out}.${process.pid}.tmp`;
  execFileSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-I', PKCS11_HEADERS, '-o', tmp, SOURCE, '-ldl', '-lpthread'], { stdio: 'pipe' });
  fs.renameSync(tmp, out);
  return out;
}

export interface ShimOptions {
  /** The real module the shim forwards to. */
  realModule: string;
  /** Hold of each C_Encrypt/C_Decrypt, in milliseconds. */
  holdMs: number;
  /** Tests: hold each call until this many are held at once (or barrierMs has passed). */
  barrier?: number;
  barrierMs?: number;
  /** Tests: the barrier applies only while this file exists. */
  barrierArmFile?: string;
  /** Tests: "held=<n> max=<m>" written there after each held call. */
  statsFile?: string;
}

/** hsm.moduleEnv entries for the shim (merge with the real module's own, e.g. SOFTHSM2_CONF). */
export function latencyShimEnv(o: ShimOptions): Record<string, string> {
  const env: Record<string, string> = { XKS_SHIM_MODULE: o.realModule, XKS_SHIM_HOLD_US: String(Math.round(o.holdMs * 1000)) };
  if (o.barrier !== undefined) env.XKS_SHIM_BARRIER = String(o.barrier);
  if (o.barrierMs !== undefined) env.XKS_SHIM_BARRIER_MS = String(o.barrierMs);
  if (o.barrierArmFile !== undefined) env.XKS_SHIM_BARRIER_ARM_FILE = o.barrierArmFile;
  if (o.statsFile !== undefined) env.XKS_SHIM_STATS_FILE = o.statsFile;
  return env;
}

/** Reads the shim's stats file: calls held so far and the most held at the same time. */
export function readShimStats(statsFile: string): { held: number; max: number } {
  let text = '';
  try {
    text = fs.readFileSync(statsFile, 'utf8');
  } catch {
    return { held: 0, max: 0 };
  }
  const m = /held=(\d+) max=(\d+)/.exec(text);
  return m ? { held: Number(m[1]), max: Number(m[2]) } : { held: 0, max: 0 };
}
