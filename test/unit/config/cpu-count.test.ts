/**
 * server.workers: auto (src/config/cpu-count.ts): one worker per core the process may use, and
 * never more than a container's CPU quota allows (a 2-CPU container on a 64-core host must not
 * fork 64 workers, each with its own HSM sessions).
 */
import { expect } from 'chai';
import { autoWorkers, cgroupCpuLimit } from '../../../src/config/cpu-count';
import { parseConfig } from '../../../src/config/load';

const workersOf = (server: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) =>
  parseConfig(
    { server: { tls: { certFile: 'c.pem', keyFile: 'k.pem' }, ...server }, hsm: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pin: { env: 'XKS_HSM_PIN' } }, keyStores: [{ name: 'a', pathPrefix: '/a', credentialsDir: 'creds/a' }] },
    '/etc/xks/config.yaml',
    env,
  ).config.server.workers;

const files = (m: Record<string, string>) => (f: string) => m[f];

describe('server.workers: auto', () => {
  it('reads the cgroup v2 quota (rounded up), the v1 quota, and none', () => {
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '200000 100000\n' }))).to.equal(2);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '150000 100000\n' }))).to.equal(2);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '50000 100000\n' }))).to.equal(1);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': 'max 100000\n' }))).to.equal(undefined);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '300000', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000' }))).to.equal(3);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000' }))).to.equal(undefined);
    expect(cgroupCpuLimit(files({}))).to.equal(undefined);
  });

  it('is one per core, capped by the quota, at least 1 and at most 64', () => {
    expect(autoWorkers(2, undefined)).to.equal(2);
    expect(autoWorkers(64, 2)).to.equal(2);
    expect(autoWorkers(1, undefined)).to.equal(1);
    expect(autoWorkers(128, undefined)).to.equal(64);
  });

  it('is the default, resolved to a number when the configuration is read; a number stays as written', () => {
    expect(workersOf({})).to.equal(autoWorkers());
    expect(workersOf({ workers: 'auto' })).to.equal(autoWorkers());
    expect(workersOf({ workers: 1 })).to.equal(1);
    expect(workersOf({}, { XKS__SERVER__WORKERS: '3' })).to.equal(3);
    expect(workersOf({ workers: 1 }, { XKS__SERVER__WORKERS: 'auto' })).to.equal(autoWorkers());
    expect(() => workersOf({ workers: 'many' })).to.throw(/server\.workers/);
  });
});
