/**
 * The HSM call time and the capacity warning (src/hsm/call-latency.ts): the proxy says so when the
 * HSM link cannot carry KMS's 1800 requests per second to a key store at the measured latency.
 * Times are fed in (record(ms)), so nothing here depends on the machine's speed.
 */
import { expect } from 'chai';
import { HsmCallLatency } from '../../../src/hsm/call-latency';
import { captureLogger } from '../../helpers/capture-logger';

const warnings = (lines: string[]) => lines.map((l) => JSON.parse(l) as { level: string; message: string; hsmCallMs?: number }).filter((l) => l.level === 'warn');

describe('HSM call latency and the capacity warning', () => {
  it('reports the median of the recent calls and the rate it allows', () => {
    const { log } = captureLogger();
    const c = new HsmCallLatency({ callMode: 'async', pool: { size: 16, acquireTimeoutMs: 100 } }, log, 20);
    expect(c.stats()).to.deep.include({ calls: 0, recentMs: undefined, concurrency: 16, capacityPerSecond: Infinity });
    for (const ms of [2, 2, 9, 2, 1]) c.record(ms);
    expect(c.stats()).to.deep.equal({ calls: 5, recentMs: 2, concurrency: 16, capacityPerSecond: 8000 });
  });

  it('counts one call at a time in callMode sync, and no more than the libuv threads in async', () => {
    const { log } = captureLogger();
    expect(new HsmCallLatency({ callMode: 'sync', pool: { size: 16, acquireTimeoutMs: 100 } }, log, 20).stats().concurrency).to.equal(1);
    expect(new HsmCallLatency({ callMode: 'async', pool: { size: 16, acquireTimeoutMs: 100 } }, log, 4).stats().concurrency).to.equal(4);
  });

  it('warns when pool x 1000 / latency is under 1800 per second (sync at 2 ms: 500/s), at most every 10 minutes', () => {
    const { log, lines } = captureLogger();
    let now = 0;
    const c = new HsmCallLatency({ callMode: 'sync', pool: { size: 8, acquireTimeoutMs: 100 } }, log, 4, () => now);
    for (let i = 0; i < 63; i++) c.record(2);
    expect(warnings(lines)).to.have.length(0); // not judged on a handful of calls
    c.record(2);
    const w = warnings(lines);
    expect(w).to.have.length(1);
    expect(w[0]!.message).to.match(/about 500 calls per second per process, under KMS's 1800.*hsm\.callMode: async/);
    expect(w[0]!.hsmCallMs).to.equal(2);
    for (let i = 0; i < 8192; i++) c.record(2);
    expect(warnings(lines)).to.have.length(1);
    now = 10 * 60_000;
    for (let i = 0; i < 4096; i++) c.record(2);
    expect(warnings(lines)).to.have.length(2);
  });

  it('does not warn when the pool carries the rate (async, 16 sessions at 5 ms: 3200/s), and does at 8 sessions (1600/s)', () => {
    const big = captureLogger();
    const ok = new HsmCallLatency({ callMode: 'async', pool: { size: 16, acquireTimeoutMs: 100 } }, big.log, 20);
    for (let i = 0; i < 4096; i++) ok.record(5);
    expect(warnings(big.lines)).to.have.length(0);
    const small = captureLogger();
    const short = new HsmCallLatency({ callMode: 'async', pool: { size: 8, acquireTimeoutMs: 100 } }, small.log, 12);
    for (let i = 0; i < 64; i++) short.record(5);
    expect(warnings(small.lines)).to.have.length(1);
    expect(warnings(small.lines)[0]!.message).to.match(/about 1600 calls per second.*raise hsm\.pool\.size/);
  });
});
