/**
 * Outcomes decided by the access gate (kill switch, allowlists) reach the audit log and the
 * metrics with the statement that denied. The pipeline is the real one (buildApp over plain HTTP,
 * real SigV4); the gate and the HSM are stand-ins, since no HSM call happens for these outcomes.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { buildApp } from '../../../src/app';
import type { AuditLog } from '../../../src/audit/audit-log';
import { KeyStoreRegistry } from '../../../src/auth/key-stores';
import { parseConfig } from '../../../src/config/load';
import type { AccessGate } from '../../../src/control/access-gate';
import { XksError } from '../../../src/errors/xks-error';
import type { HsmBackend } from '../../../src/hsm/backend';
import { createSilentLogger } from '../../../src/log/logger';
import { PromMeter } from '../../../src/metrics/prom-meter';
import { HealthMonitor } from '../../../src/xks/health-monitor';
import { XksService } from '../../../src/xks/service';
import { signedHeaders } from '../../helpers/signer';
import { sample } from '../metrics/exposition';
import { auditFixture, type AuditFixture } from './helpers';

describe('audit and metrics for gate outcomes (403, kill switch)', () => {
  const cred = { accessKeyId: 'GATETESTGATETESTGATE2345', secret: crypto.randomBytes(32).toString('base64') };
  let fx: AuditFixture;
  let log: AuditLog;
  let meter: PromMeter;
  let server: http.Server;
  let port: number;

  const gate: AccessGate = {
    enter(ctx) {
      if (ctx.externalKeyId === 'blocked') throw new XksError('InvalidStateException', undefined, 'key blocked by the operator');
      if (ctx.metadata.kmsViaService === 'ebs') {
        const e = new XksError('AccessDeniedException', undefined, 'allowlist: no statement allows kmsViaService ebs');
        e.statement = 'deny-all-but-s3';
        throw e;
      }
      return { keyBlocked: false, done: () => undefined };
    },
  };

  before(async () => {
    fx = await auditFixture();
    log = fx.open();
    meter = new PromMeter({ processMetrics: false });
    const { config } = parseConfig(
      {
        server: { plainHttp: true },
        hsm: { module: '/nonexistent.so', tokenLabel: 't', pin: { env: 'UNUSED' } },
        keyStores: [{ name: 'g', pathPrefix: '/g', credentials: [{ accessKeyId: cred.accessKeyId, secret: { env: 'GATE_SECRET' } }], keys: [{ externalKeyId: 'k' }, { externalKeyId: 'blocked' }] }],
      },
      '/tmp/config.yaml',
      { GATE_SECRET: cred.secret },
    );
    const silent = createSilentLogger();
    const hsm = {} as HsmBackend; // never reached: the gate decides first
    const health = new HealthMonitor(hsm, { healthKeyLabel: 'h', intervalMs: 60000, degradedAboveMs: 100 }, silent);
    const registry = new KeyStoreRegistry(config, silent, { GATE_SECRET: cred.secret });
    const service = new XksService(hsm, health, { vendor: 'v', model: 'm', fleetSize: 1 }, silent);
    server = http.createServer(buildApp({ config, registry, service, health, requestLog: log, log: silent, gate, meter }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });

  after(async () => {
    await new Promise((r) => server.close(r));
    await log.close();
    fx.cleanup();
  });

  async function post(urlPath: string, body: unknown): Promise<number> {
    const text = JSON.stringify(body);
    const headers = await signedHeaders({ host: `127.0.0.1:${port}`, path: urlPath, body: text, accessKeyId: cred.accessKeyId, secret: cred.secret });
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: urlPath, headers }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(text);
    });
  }

  const md = (via: string) => ({ awsPrincipalArn: 'arn:aws:iam::1:user/a', kmsKeyArn: 'arn:aws:kms:us-east-1:1:key/x', kmsOperation: 'DescribeKey', kmsRequestId: crypto.randomUUID(), kmsViaService: via });

  it('audits an allowlist denial (403) with the statement that denied', async () => {
    const m = md('ebs');
    expect(await post('/g/kms/xks/v1/keys/k/metadata', { requestMetadata: m })).to.equal(403);
    log.flush();
    const r = fx.lines().map((l) => JSON.parse(l)).find((x) => x.kmsRequestId === m.kmsRequestId);
    expect(r).to.include({ outcome: 'error', errorName: 'AccessDeniedException', status: 403, policyStatement: 'deny-all-but-s3', kmsViaService: 'ebs' });
    const { body } = await meter.scrape();
    expect(sample(body, 'xks_requests_total', { key_store: 'g', api: 'GetKeyMetadata', outcome: 'AccessDeniedException' })).to.equal(1);
  });

  it('answers InternalException, not the outcome, when the request\'s audit record cannot be written (fail closed)', async () => {
    // Fault injection: the audit file's descriptor points at /dev/full for this one request.
    const priv = log as unknown as { fd: number };
    const good = priv.fd;
    priv.fd = fs.openSync('/dev/full', 'a');
    try {
      expect(await post('/g/kms/xks/v1/keys/k/metadata', { requestMetadata: md('ebs') })).to.equal(500);
    } finally {
      fs.closeSync(priv.fd);
      priv.fd = good;
    }
    const { body } = await meter.scrape();
    expect(sample(body, 'xks_requests_total', { key_store: 'g', api: 'GetKeyMetadata', outcome: 'InternalException' })).to.equal(1);
    expect(log.stats.writeErrors).to.equal(1);
  });

  it('audits a blocked key (InvalidStateException)', async () => {
    const m = md('s3');
    expect(await post('/g/kms/xks/v1/keys/blocked/metadata', { requestMetadata: m })).to.equal(400);
    log.flush();
    const r = fx.lines().map((l) => JSON.parse(l)).find((x) => x.kmsRequestId === m.kmsRequestId);
    expect(r).to.include({ errorName: 'InvalidStateException', externalKeyId: 'blocked', reason: 'key blocked by the operator' });
  });
});
