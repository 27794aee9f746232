/**
 * The fleet deployment files (docs/fleet.md "Containers", docs/systemd.md "Fleet"), checked as an
 * operator would trip over them: the compose file's three etcd members form one cluster, both
 * proxies share one token volume and reach every etcd member, and no two services fight over a
 * port (host networking); each proxy's configuration, with its environment overrides, passes the
 * real config loader. The systemd units pass `systemd-analyze verify` without a single warning.
 * (scripts/fleet-compose-smoke.sh runs the compose file for real; it needs a container engine.)
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { loadConfig } from '../../../src/config/load';

const ROOT = path.resolve(__dirname, '../../../..');
const FLEET_DIR = path.join(ROOT, 'docker/fleet');

interface Service {
  image?: string;
  build?: { context: string };
  network_mode?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  command?: string[];
}

const compose = YAML.parse(fs.readFileSync(path.join(FLEET_DIR, 'compose.yaml'), 'utf8'), { merge: true }) as { services: Record<string, Service>; volumes: Record<string, unknown> };
const services = compose.services;
const etcdNames = Object.keys(services).filter((n) => services[n]!.image?.includes('xks-etcd'));
const proxyNames = Object.keys(services).filter((n) => n.startsWith('proxy-'));
const port = (url: string) => Number(new URL(url).port);
/** A proxy's configuration as the container sees it: the mounted file and its environment. */
const proxyConfig = (n: string) => {
  const env = services[n]!.environment!;
  const mount = services[n]!.volumes!.find((v) => v.endsWith(`:${env.XKS_CONFIG}:ro`))!;
  return loadConfig(path.resolve(FLEET_DIR, mount.split(':')[0]!), env).config;
};

describe('fleet deployment: compose file', () => {
  it('has three etcd members of one cluster, built from Debian bookworm with Debian\'s etcd-server', () => {
    expect(etcdNames).to.have.length(3);
    const clusters = new Set(etcdNames.map((n) => services[n]!.environment!.ETCD_INITIAL_CLUSTER));
    expect(clusters.size, 'one ETCD_INITIAL_CLUSTER for all').to.equal(1);
    const cluster = [...clusters][0]!;
    for (const n of etcdNames) {
      const e = services[n]!.environment!;
      expect(cluster.split(','), n).to.include(`${e.ETCD_NAME}=${e.ETCD_INITIAL_ADVERTISE_PEER_URLS}`);
      expect(e.ETCD_ADVERTISE_CLIENT_URLS).to.equal(e.ETCD_LISTEN_CLIENT_URLS);
      expect(services[n]!.volumes!.some((v) => v.endsWith(':/var/lib/etcd'))).to.equal(true);
    }
    const dockerfile = fs.readFileSync(path.join(FLEET_DIR, services[etcdNames[0]!]!.build!.context, 'Dockerfile'), 'utf8');
    expect(dockerfile).to.match(/^FROM debian:bookworm/m);
    expect(dockerfile).to.match(/apt-get install .*etcd-server/);
  });

  it('runs two proxies on the one token volume made by xks-init, each a fleet member on all three etcd members', () => {
    expect(proxyNames).to.have.length(2);
    expect(services['xks-init']!.environment!.XKS_INIT_DEMO).to.equal('1');
    const clientUrls = etcdNames.map((n) => services[n]!.environment!.ETCD_ADVERTISE_CLIENT_URLS).sort();
    const cfgs = proxyNames.map(proxyConfig);
    for (const [i, c] of cfgs.entries()) {
      expect(services[proxyNames[i]!]!.volumes).to.include('xks-data:/data');
      expect(c.control?.store).to.equal('etcd');
      expect([...c.control!.etcd!.endpoints].sort()).to.deep.equal(clientUrls);
      expect(c.hsm.moduleEnv?.SOFTHSM2_CONF).to.match(/^\/data\//);
    }
    expect(services['xks-init']!.volumes).to.include('xks-data:/data');
    // One fleet (one prefix), distinct members, each with its own audit chain.
    expect(new Set(cfgs.map((c) => c.control!.etcd!.prefix)).size).to.equal(1);
    expect(new Set(cfgs.map((c) => c.control!.etcd!.nodeId)).size).to.equal(2);
    expect(new Set(cfgs.map((c) => c.audit?.file)).size).to.equal(2);
  });

  it('gives every listener of every service its own port (host networking)', () => {
    const ports: number[] = [];
    for (const n of etcdNames) {
      const e = services[n]!.environment!;
      ports.push(port(e.ETCD_LISTEN_CLIENT_URLS!), port(e.ETCD_LISTEN_PEER_URLS!));
    }
    for (const n of proxyNames) {
      const c = proxyConfig(n);
      ports.push(c.server.port, c.control!.admin!.port, c.metrics!.port!);
    }
    for (const n of [...etcdNames, ...proxyNames, 'xks-init']) expect(services[n]!.network_mode, n).to.equal('host');
    expect(ports.length).to.equal(3 * 2 + 2 * 3);
    expect(new Set(ports).size, `ports ${ports.join(', ')}`).to.equal(ports.length);
  });
});

describe('fleet deployment: systemd units', () => {
  const unitDir = path.join(ROOT, 'ops/systemd');

  it('xks-etcd@ and xks-proxy@ verify cleanly (systemd-analyze verify, an instance of each)', function () {
    this.timeout(30_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xks-units-'));
    try {
      // verify checks that each Exec program exists here. The units name the programs of a Debian
      // host (/usr/bin/node from Debian's nodejs, /bin/kill from procps); a container running this
      // test may lack them (the node image has /usr/local/bin/node and no procps), so the copies
      // point a missing one at the node running this test. The programs themselves are checked
      // below, and everything else is verified as shipped.
      const here = (program: string) => (fs.existsSync(program) ? program : process.execPath);
      for (const f of ['xks-etcd@.service', 'xks-proxy@.service', 'xks-proxy.service']) {
        const text = fs.readFileSync(path.join(unitDir, f), 'utf8');
        for (const [, program] of text.matchAll(/^Exec\w+=[-@:+!]*(\S+)/gm)) expect(['/usr/bin/node', '/usr/bin/etcd', '/bin/kill'], `${f}: ${program}`).to.include(program);
        fs.writeFileSync(path.join(dir, f), text.replace(/^(Exec\w+=[-@:+!]*)(\/usr\/bin\/node|\/bin\/kill)\b/gm, (_m, key: string, program: string) => key + here(program)));
      }
      const r = spawnSync('systemd-analyze', ['verify', path.join(dir, 'xks-etcd@e1.service'), path.join(dir, 'xks-proxy@a.service'), path.join(dir, 'xks-proxy.service')], { encoding: 'utf8' });
      expect(r.error, 'systemd-analyze (Debian package systemd, installed by .ci/run)').to.equal(undefined);
      expect(r.status, `${r.stdout}${r.stderr}`).to.equal(0);
      // verify exits 0 on unknown keys and bad values: its warnings are the finding.
      expect(`${r.stdout}${r.stderr}`.trim()).to.equal('');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the templates keep each instance apart (config, state and logs per instance)', () => {
    const proxy = fs.readFileSync(path.join(unitDir, 'xks-proxy@.service'), 'utf8');
    expect(proxy).to.match(/^Environment=XKS_CONFIG=\/etc\/xks-proxy\/%i\.yaml$/m);
    expect(proxy).to.match(/^StateDirectory=xks-proxy\/%i$/m);
    expect(proxy).to.match(/^LogsDirectory=xks-proxy\/%i$/m);
    const etcd = fs.readFileSync(path.join(unitDir, 'xks-etcd@.service'), 'utf8');
    expect(etcd).to.match(/^EnvironmentFile=\/etc\/xks-etcd\/%i\.env$/m);
    expect(etcd).to.match(/^Environment=ETCD_DATA_DIR=\/var\/lib\/xks-etcd\/%i$/m);
    // The example environment file names only flags this etcd knows.
    const known = execFileSync('etcd', ['--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    for (const line of fs.readFileSync(path.join(unitDir, 'xks-etcd.env.example'), 'utf8').split('\n')) {
      const m = /^ETCD_([A-Z_]+)=/.exec(line);
      if (m) expect(known, line).to.include(`--${m[1]!.toLowerCase().replace(/_/g, '-')}`);
    }
  });
});
