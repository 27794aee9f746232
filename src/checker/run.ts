/**
 * xks-proxy check: run the conformance cases against a proxy and report pass/fail per case and the
 * latency of each call against KMS's 250 ms budget (spec "KMS Considerations"), TLS handshake
 * included.
 */
import { CASES, migrationCase, type CheckContext } from './cases';
import { XksClient, type ClientOptions } from './client';

export const KMS_BUDGET_MS = 250;

export interface CaseReport {
  name: string;
  spec: string;
  pass: boolean;
  detail: string;
  maxMs: number;
}

export interface CheckReport {
  url: string;
  tls: { handshakeMs: number; protocol: string | null; cipher: string } | { error: string };
  cases: CaseReport[];
  passed: number;
  failed: number;
  slowestCallMs: number;
  withinBudget: boolean;
}

export async function runChecks(opts: ClientOptions & { keyId: string; ciphertextsFrom?: string | undefined }): Promise<CheckReport> {
  const client = new XksClient(opts);
  const extra = opts.ciphertextsFrom ? [migrationCase(new XksClient({ ...opts, baseUrl: opts.ciphertextsFrom }), opts.ciphertextsFrom)] : [];
  let tls: CheckReport['tls'];
  try {
    const h = await client.handshake();
    tls = { handshakeMs: round(h.ms), protocol: h.protocol, cipher: h.cipher };
  } catch (e) {
    tls = { error: (e as Error).message };
  }
  const ctx: CheckContext = { client, keyId: opts.keyId };
  const cases: CaseReport[] = [];
  try {
    for (const c of [...CASES, ...extra]) {
      try {
        const o = await c.run(ctx);
        cases.push({ name: c.name, spec: c.spec, pass: o.pass, detail: o.detail, maxMs: round(Math.max(0, ...o.ms)) });
      } catch (e) {
        cases.push({ name: c.name, spec: c.spec, pass: false, detail: `error: ${(e as Error).message}`, maxMs: 0 });
      }
    }
  } finally {
    client.close();
  }
  const slowest = Math.max(0, ...cases.map((c) => c.maxMs));
  const handshake = 'handshakeMs' in tls ? tls.handshakeMs : 0;
  return {
    url: opts.baseUrl,
    tls,
    cases,
    passed: cases.filter((c) => c.pass).length,
    failed: cases.filter((c) => !c.pass).length,
    slowestCallMs: slowest,
    // A first call on a new connection costs the handshake plus the call.
    withinBudget: handshake + slowest < KMS_BUDGET_MS,
  };
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

export function formatReport(r: CheckReport): string {
  const lines = [`XKS conformance check of ${r.url}`];
  lines.push('tls' in r && 'error' in r.tls ? `TLS: FAILED (${r.tls.error})` : `TLS: ${(r.tls as { protocol: string }).protocol} ${(r.tls as { cipher: string }).cipher}, handshake ${(r.tls as { handshakeMs: number }).handshakeMs} ms`);
  for (const c of r.cases) lines.push(`${c.pass ? 'PASS' : 'FAIL'}  ${c.name}  (${c.maxMs} ms) [${c.spec}]${c.pass ? '' : '\n      ' + c.detail}`);
  lines.push(`${r.passed} passed, ${r.failed} failed`);
  lines.push(`slowest call ${r.slowestCallMs} ms; with a new TLS handshake ${r.withinBudget ? 'within' : 'OVER'} KMS's ${KMS_BUDGET_MS} ms budget`);
  return lines.join('\n');
}
