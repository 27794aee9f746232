/**
 * The dashboard and alert rules in ops/ only use metrics the proxy exposes (a renamed metric
 * would silently blank a panel or disarm an alert), and the alerts are all there.
 * (`promtool check rules ops/prometheus/alerts.yml` checks the PromQL itself.)
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { PromMeter } from '../../../src/metrics/prom-meter';

const root = path.join(__dirname, '../../../..');

function metricNames(): Set<string> {
  const names = new Set<string>();
  for (const m of new PromMeter().registry.getMetricsAsArray()) {
    names.add(m.name);
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_count', '_sum']) names.add(m.name + s);
  }
  return names;
}

function usedMetrics(exprs: string[]): string[] {
  const used = new Set<string>();
  for (const e of exprs) for (const m of e.matchAll(/\b((?:xks|process|nodejs)_[a-z0-9_]+)/g)) used.add(m[1]!);
  return [...used];
}

describe('ops: dashboard and alert rules', () => {
  const known = metricNames();

  it('alert rules parse, are complete, and use only exposed metrics', () => {
    const doc = YAML.parse(fs.readFileSync(path.join(root, 'ops/prometheus/alerts.yml'), 'utf8'));
    const rules = doc.groups.flatMap((g: { rules: unknown[] }) => g.rules) as { alert: string; expr: string; labels: { severity: string }; annotations: { summary: string } }[];
    for (const r of rules) {
      expect(r.alert, JSON.stringify(r)).to.match(/^Xks[A-Za-z0-9]+$/);
      expect(r.labels.severity).to.be.oneOf(['info', 'warning', 'critical']);
      expect(r.annotations.summary).to.be.a('string');
    }
    for (const m of usedMetrics(rules.map((r) => r.expr))) expect(known.has(m), m).to.equal(true);
    const all = rules.map((r) => r.expr).join('\n');
    // Issue 4: error rate, p99 near the 250 ms budget, health not ACTIVE, kill switch, certificate, credential age, throttling.
    for (const needle of ['outcome!="ok"', 'xks_request_duration_seconds_bucket', 'status="ACTIVE"', 'xks_kill_switch_engaged', 'xks_tls_certificate_expiry_days', 'xks_sigv4_credential_age_days', 'xks_throttled_requests_total', 'xks_key_encryption_limit', 'xks_key_rotation_threshold_encryptions', 'xks_control_store_up', 'xks_fleet_members', 'xks_control_applied_revision', 'xks_fleet_credentials_refused']) {
      expect(all).to.include(needle);
    }
  });

  it('the Grafana dashboard is valid JSON and uses only exposed metrics', () => {
    const dash = JSON.parse(fs.readFileSync(path.join(root, 'ops/grafana/xks-proxy-dashboard.json'), 'utf8'));
    const exprs: string[] = dash.panels.flatMap((p: { targets?: { expr: string }[] }) => (p.targets ?? []).map((t) => t.expr));
    expect(exprs.length).to.be.greaterThan(15);
    const used = usedMetrics(exprs);
    for (const m of used) expect(known.has(m), m).to.equal(true);
    expect(new Set(dash.panels.map((p: { id: number }) => p.id)).size).to.equal(dash.panels.length);
  });
});
