/**
 * The Prometheus meter on its own registry: what moves on which hook, bounded labels, scrape-time
 * gauges, and the SigV4 failure reason table.
 */
import { expect } from 'chai';
import { SIGV4_FAILURE_REASONS } from '../../../src/auth/sigv4';
import { controlStateFromScopes, sigv4FailureReason } from '../../../src/metrics/meter';
import { MeteredBackend } from '../../../src/metrics/metered-backend';
import { PromMeter } from '../../../src/metrics/prom-meter';
import { XksError } from '../../../src/errors/xks-error';
import type { HsmBackend } from '../../../src/hsm/backend';
import { sample } from './exposition';

const rec = (over: Record<string, unknown> = {}): any => ({ time: new Date().toISOString(), api: 'Encrypt', keyStore: 'ks1', externalKeyId: 'k1', outcome: 'ok', status: 200, latencyMs: 3, ...over });

describe('metrics', () => {
  describe('SigV4 failure reasons (bounded label from the verifier\'s reason code)', () => {
    for (const reason of SIGV4_FAILURE_REASONS) it(`sigv4.${reason} -> ${reason}`, () => expect(sigv4FailureReason(`sigv4.${reason}`)).to.equal(reason));
    for (const code of ['sigv4.something_new', 'quota', 'sigv4.', undefined]) it(`${String(code)} -> other`, () => expect(sigv4FailureReason(code)).to.equal('other'));
  });

  it('counts requests by key store, API and outcome, with latency in the 1..250 ms buckets', async () => {
    const m = new PromMeter({ processMetrics: false });
    m.requestCompleted(rec());
    m.requestCompleted(rec({ latencyMs: 120 }));
    m.requestCompleted(rec({ outcome: 'error', errorName: 'KeyNotFoundException', status: 404 }));
    const { body } = await m.scrape();
    expect(sample(body, 'xks_requests_total', { key_store: 'ks1', api: 'Encrypt', outcome: 'ok' })).to.equal(2);
    expect(sample(body, 'xks_requests_total', { outcome: 'KeyNotFoundException' })).to.equal(1);
    expect(sample(body, 'xks_request_duration_seconds_bucket', { outcome: 'ok', le: '0.005' })).to.equal(1);
    expect(sample(body, 'xks_request_duration_seconds_bucket', { outcome: 'ok', le: '0.15' })).to.equal(2);
    expect(sample(body, 'xks_request_duration_seconds_count', { outcome: 'ok' })).to.equal(2);
    for (const le of ['0.001', '0.002', '0.005', '0.01', '0.025', '0.05', '0.1', '0.15', '0.2', '0.25']) expect(body).to.include(`le="${le}"`);
    expect(body).to.not.include('external_key_id');
  });

  it('counts SigV4 failures by reason and throttled requests by key store', async () => {
    const m = new PromMeter({ processMetrics: false });
    m.requestCompleted(rec({ outcome: 'error', errorName: 'AuthenticationFailedException', reason: 'sigv4: signature does not match', reasonCode: 'sigv4.signature_mismatch' }));
    m.requestCompleted(rec({ outcome: 'error', errorName: 'ThrottlingException' }));
    const { body } = await m.scrape();
    expect(sample(body, 'xks_sigv4_failures_total', { key_store: 'ks1', reason: 'signature_mismatch' })).to.equal(1);
    expect(sample(body, 'xks_throttled_requests_total', { key_store: 'ks1' })).to.equal(1);
  });

  it('labels key ids only when asked, and only keys the key store has', async () => {
    const m = new PromMeter({ keyIdLabels: true, processMetrics: false });
    m.bind({ knownKey: (ks, id) => ks === 'ks1' && id === 'k1' });
    m.requestCompleted(rec());
    m.requestCompleted(rec({ externalKeyId: 'attacker-chosen-1', outcome: 'error', errorName: 'KeyNotFoundException' }));
    m.requestCompleted(rec({ externalKeyId: 'attacker-chosen-2', outcome: 'error', errorName: 'KeyNotFoundException' }));
    const { body } = await m.scrape();
    expect(sample(body, 'xks_requests_total', { external_key_id: 'k1', outcome: 'ok' })).to.equal(1);
    expect(sample(body, 'xks_requests_total', { external_key_id: '_other' })).to.equal(2);
    expect(body).to.not.include('attacker-chosen');
  });

  it('reads pool, health, kill switch, certificate and credential state at scrape time', async () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    {
      const m = new PromMeter({ processMetrics: false });
      let pool = { size: 4, inUse: 1, waiters: 0 };
      let control = { proxy: false, keyStores: [] as string[], keys: {} as Record<string, number> };
      m.bind({
        now: () => now,
        keyStores: ['ks1', 'ks2'],
        pool: () => pool,
        poolMax: 8,
        health: () => ({ status: 'DEGRADED', checkedAt: now, latencyMs: 120 }),
        credentials: () => [{ keyStore: 'ks1', accessKeyId: 'AKIDAKIDAKIDAKIDAKID', createdAtMs: now - 90 * 86_400_000 }],
      });
      m.setControlStateProvider(() => control);
      let body = (await m.scrape()).body;
      expect(sample(body, 'xks_hsm_session_pool', { state: 'in_use' })).to.equal(1);
      expect(sample(body, 'xks_hsm_session_pool', { state: 'max' })).to.equal(8);
      expect(sample(body, 'xks_hsm_session_pool', { state: 'open' })).to.equal(4);
      expect(sample(body, 'xks_health_status', { status: 'DEGRADED' })).to.equal(1);
      expect(sample(body, 'xks_health_status', { status: 'ACTIVE' })).to.equal(0);
      expect(sample(body, 'xks_health_check_duration_seconds')).to.equal(0.12);
      expect(sample(body, 'xks_kill_switch_engaged', { scope: 'proxy' })).to.equal(0);
      expect(sample(body, 'xks_sigv4_credential_age_days', { key_store: 'ks1', access_key_id: 'AKIDAKIDAKIDAKIDAKID' })).to.equal(90);
      pool = { size: 4, inUse: 4, waiters: 3 };
      control = { proxy: true, keyStores: ['ks2'], keys: { ks1: 2 } };
      body = (await m.scrape()).body;
      expect(sample(body, 'xks_hsm_session_pool', { state: 'waiters' })).to.equal(3);
      expect(sample(body, 'xks_kill_switch_engaged', { scope: 'proxy' })).to.equal(1);
      expect(sample(body, 'xks_kill_switch_engaged', { scope: 'key_store', key_store: 'ks2' })).to.equal(1);
      expect(sample(body, 'xks_kill_switch_engaged', { scope: 'key_store', key_store: 'ks1' })).to.equal(0);
      expect(sample(body, 'xks_blocked_keys', { key_store: 'ks1' })).to.equal(2);
      expect(sample(body, 'xks_blocked_keys', { key_store: 'ks2' })).to.equal(0);
    }
  });

  it('reads the kill switch state from block scopes', () => {
    expect(controlStateFromScopes(['proxy', 'keystore:a', 'key:b/k1', 'key:b/k2', 'key:a/k'])).to.deep.equal({ proxy: true, keyStores: ['a'], keys: { b: 2, a: 1 } });
    expect(controlStateFromScopes([])).to.deep.equal({ proxy: false, keyStores: [], keys: {} });
  });

  it('keeps registries apart: two meters in one process do not share counters', async () => {
    const a = new PromMeter();
    const b = new PromMeter();
    a.requestCompleted(rec());
    expect(sample((await a.scrape()).body, 'xks_requests_total', { outcome: 'ok' })).to.equal(1);
    expect(sample((await b.scrape()).body, 'xks_requests_total', { outcome: 'ok' })).to.equal(undefined);
    expect((await b.scrape()).body).to.include('process_cpu_user_seconds_total');
  });

  it('times HSM calls through the metered backend, errors by errorName', async () => {
    const m = new PromMeter({ processMetrics: false });
    const inner = {
      encrypt: async () => ({ ciphertext: Buffer.alloc(1), iv: Buffer.alloc(12), tag: Buffer.alloc(16) }),
      decrypt: async () => {
        throw new XksError('InvalidCiphertextException');
      },
    } as unknown as HsmBackend;
    const hsm = new MeteredBackend(inner, m);
    await hsm.encrypt('k', Buffer.alloc(1), Buffer.alloc(0));
    let caught: unknown;
    await hsm.decrypt('k', Buffer.alloc(1), Buffer.alloc(12), Buffer.alloc(16), Buffer.alloc(0)).catch((e) => (caught = e));
    expect(caught).to.be.instanceOf(XksError);
    const { body } = await m.scrape();
    expect(sample(body, 'xks_hsm_operation_duration_seconds_count', { operation: 'encrypt', outcome: 'ok' })).to.equal(1);
    expect(sample(body, 'xks_hsm_operation_duration_seconds_count', { operation: 'decrypt', outcome: 'InvalidCiphertextException' })).to.equal(1);
  });
});
