/**
 * The admin API: a separate listener (loopback by default; TLS, optionally with client
 * certificates, when exposed), JSON only. Each endpoint is a list of named steps:
 *   authenticate (JWT, 401) -> authorise role (403) -> validate body (400) -> act -> record.
 *
 *   GET    /admin/v1/state                                      auditor, operator
 *   POST   /admin/v1/kill-switch/engage        {scope, reason}  operator
 *   POST   /admin/v1/kill-switch/approve-lift  {scope, reason}  operator
 *   GET    /admin/v1/policies                                   auditor, operator
 *   GET    /admin/v1/policies/:keyStore                         auditor, operator
 *   PUT    /admin/v1/policies/:keyStore        {policy, reason} operator (validated first; 400 lists errors;
 *                                                                 a loosening is 202 until the lift quorum approved it)
 *   DELETE /admin/v1/policies/:keyStore        {reason}         operator (202 until the lift quorum approved it)
 *   GET    /admin/v1/key-stores                                 auditor, operator
 *   POST   /admin/v1/key-stores/:name/credentials        {reason} operator (answers the KMS proxy configuration)
 *   DELETE /admin/v1/key-stores/:name/credentials/:akid  {reason} operator (never the last one)
 *   POST   /admin/v1/reload                     {reason}       operator (the config file, as SIGHUP; 400 lists problems)
 *   POST   /admin/v1/key-versions/retire  {keyStore, externalKeyId, version, reason, forceRecentUse?}
 *                                                               operator (202 until the lift quorum approved it;
 *                                                                 200 once the version is destroyed)
 *
 * Every change, and every refused change, is handed to onAdminAction (who, when, scope, reason).
 */
import { serviceErrorBody } from '../http/respond';
import express from 'express';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { KeyStoreRegistry } from '../auth/key-stores';
import { ConfigError } from '../config/load';
import type { Config } from '../config/schema';
import type { AdminConfig } from '../control/config';
import type { ControlPlane, PolicyChangeResult } from '../control/control-plane';
import { ScopeError } from '../control/scope';
import { ControlError, type Actor } from '../control/state-model';
import { closeServer, listen, tlsOptions } from '../http/server';
import type { AppLogger } from '../log/logger';
import type { RetireRequest, RetireResult } from '../xks/key-retirement';
import type { AdminActionRecord, AdminActionSink } from './actions';
import { addCredential, removeCredential } from './credentials-admin';
import type { FleetCredentials } from '../control/fleet-credentials';
import { AuthError, OperatorAuth, type OperatorAuthOptions, type OperatorIdentity } from './jwt';
import type { Role } from './tokens';

export interface AdminServerDeps {
  admin: AdminConfig;
  /** The configuration in force now (hot reload replaces it). */
  config: () => Readonly<Config>;
  control: ControlPlane;
  registry: KeyStoreRegistry;
  log: AppLogger;
  onAdminAction: AdminActionSink;
  now?: () => number;
  /** Hot reload of the configuration file (as SIGHUP does); rejects with ConfigError when invalid. */
  reload?: () => Promise<unknown>;
  /** Lets other modules mount routes on the admin listener (e.g. /metrics); `guard.reader` authenticates a reading role. */
  extraRoutes?: (app: express.Express, guard: AdminGuards) => void;
  /** Quorum-approved retirement of key versions (src/xks/key-retirement.ts); absent: 409 (e.g. a cluster primary). */
  retireKeyVersion?: (r: RetireRequest) => Promise<RetireResult>;
  /** Fleet mode: the token id replay set shared by every member (OperatorAuthOptions.claimJti). */
  claimJti?: OperatorAuthOptions['claimJti'];
  /** Fleet mode: credentials of keyStores[].fleetCredentials live in etcd (src/control/fleet-credentials.ts). */
  fleetCredentials?: FleetCredentials;
}

/** Fleet credentials: the change's etcd revision, for the audit record. */
const atRevision = (revision: number | undefined): string => (revision === undefined ? '' : ` (etcd revision ${revision})`);

/** The admin API's own checks, for routes other modules mount. */
export interface AdminGuards {
  /** A valid operator token of a role that may read (auditor, operator): 401 / 403 otherwise. */
  reader: express.RequestHandler[];
}

export interface RunningAdminServer {
  port: number;
  auth: OperatorAuth;
  close(graceMs?: number): Promise<void>;
}

type Req = express.Request & { operator?: OperatorIdentity };

const CONTROL_STATUS: Record<ControlError['code'], number> = {
  invalid: 400,
  'policy-invalid': 400,
  'not-found': 404,
  'not-blocked': 409,
  conflict: 409,
  'fail-closed': 409,
  'lock-timeout': 503,
};

function send(res: express.Response, status: number, body: unknown): void {
  res.status(status).set('Cache-Control', 'no-store').type('application/json').send(JSON.stringify(body));
}

export function buildAdminApp(deps: AdminServerDeps, auth: OperatorAuth): express.Express {
  const { control, registry, log, onAdminAction } = deps;
  const now = deps.now ?? Date.now;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  const authenticate: express.RequestHandler = (req, res, next) => {
    auth.verify(req.headers.authorization).then(
      (id) => {
        (req as Req).operator = id;
        next();
      },
      (e: unknown) => {
        const err = e instanceof AuthError ? e : new AuthError(401, String(e));
        log.warn('admin authentication failed', { status: err.status, reason: err.detail, path: req.path, remote: req.socket.remoteAddress });
        if (err.status === 401) res.set('WWW-Authenticate', 'Bearer');
        // 401: no valid token; 403: a valid token claiming a role its key does not hold; else the
        // authentication itself failed (e.g. an unreadable JWKS file).
        const [code, message] =
          err.status === 401 ? ['unauthorized', 'a valid operator token is required'] : err.status === 403 ? ['forbidden', 'this operator key may not claim that role'] : ['unavailable', 'operator authentication is unavailable; see the proxy log'];
        send(res, err.status, serviceErrorBody(code, message));
      },
    );
  };
  const requireRole =
    (...roles: Role[]): express.RequestHandler =>
    (req, res, next) => {
      const id = (req as Req).operator!;
      if (roles.includes(id.role)) return next();
      record(req as Req, { action: `${req.method} ${req.path}`, outcome: 'refused', status: 403, detail: `role ${id.role} may not do this` });
      send(res, 403, serviceErrorBody('forbidden', `role ${id.role} may not do this`));
    };
  // The body is parsed only after the caller is authenticated and authorised.
  const json = express.json({ limit: '256kb', type: () => true });
  const anyone = [authenticate, requireRole('operator', 'auditor')];
  const operator = [authenticate, requireRole('operator'), json];

  function record(req: Req, r: Omit<AdminActionRecord, 'time' | 'operator' | 'via' | 'role' | 'jti'>): void {
    const id = req.operator;
    onAdminAction({ time: new Date(now()).toISOString(), operator: id?.operator ?? '(unauthenticated)', role: id?.role, via: 'admin-api', jti: id?.jti, ...r });
  }
  const actor = (req: Req): Actor => ({ operator: req.operator!.operator, via: 'admin-api' });
  const bodyField = (req: express.Request, name: string): unknown => (req.body && typeof req.body === 'object' ? (req.body as Record<string, unknown>)[name] : undefined);
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');

  /** Runs a change; maps refusals to their status and records the outcome either way. */
  function change(action: string, what: (req: Req) => { scope?: string; keyStore?: string; accessKeyId?: string }, run: (req: Req) => Promise<{ status?: number; body: unknown; detail?: string }>): express.RequestHandler {
    return async (req, res) => {
      const r = req as Req;
      const reason = str(bodyField(r, 'reason'));
      const base = { action, ...what(r), reason };
      try {
        const out = await run(r);
        record(r, { ...base, outcome: 'ok', status: out.status ?? 200, detail: out.detail });
        send(res, out.status ?? 200, out.body);
      } catch (e) {
        if (e instanceof ControlError || e instanceof ScopeError) {
          const status = e instanceof ControlError ? CONTROL_STATUS[e.code] : 400;
          record(r, { ...base, outcome: 'refused', status, detail: e.message });
          send(res, status, serviceErrorBody(e instanceof ControlError ? e.code : 'invalid', e.message, e instanceof ControlError && e.errors.length ? { errors: e.errors } : {}));
          return;
        }
        log.error('admin action failed', { action, reason: (e as Error).message });
        record(r, { ...base, outcome: 'error', status: 500, detail: (e as Error).message });
        send(res, 500, serviceErrorBody('internal', 'the action failed; see the proxy log'));
      }
    };
  }

  app.get('/admin/v1/state', ...anyone, (_req, res) => send(res, 200, control.publicState()));

  app.post(
    '/admin/v1/kill-switch/engage',
    ...operator,
    change('kill-switch.engage', (r) => ({ scope: str(bodyField(r, 'scope')) }), async (r) => {
      const out = await control.engage(str(bodyField(r, 'scope')), actor(r), str(bodyField(r, 'reason')));
      // Fleet mode: the etcd revision, and who acknowledged it, go into this member's audit record.
      const fleet = out.fleet ? `; etcd revision ${out.revision}, acknowledged by ${out.fleet.acknowledged.join(', ')}${out.fleet.missing.length ? `, NOT acknowledged by ${out.fleet.missing.join(', ')}` : ''}` : '';
      return { body: { engaged: true, ...out }, detail: (out.drained ? 'drained' : `${out.stillInFlight} operations still in flight after the drain timeout`) + fleet };
    }),
  );

  app.post(
    '/admin/v1/kill-switch/approve-lift',
    ...operator,
    change('kill-switch.approve-lift', (r) => ({ scope: str(bodyField(r, 'scope')) }), async (r) => {
      const out = await control.approveLift(str(bodyField(r, 'scope')), actor(r), str(bodyField(r, 'reason')));
      return { body: out, detail: out.lifted ? `lifted; approved by ${out.approvers.join(', ')}` : `${out.approvers.length} of ${out.required} approvals` };
    }),
  );

  app.get('/admin/v1/policies', ...anyone, (_req, res) => {
    const out: Record<string, unknown> = {};
    for (const ks of registry.all()) out[ks.name] = control.policy(ks.name) ?? null;
    send(res, 200, { policies: out });
  });

  app.get('/admin/v1/policies/:keyStore', ...anyone, (req, res) => {
    const ks = String(req.params.keyStore);
    if (!registry.byName(ks)) return send(res, 404, serviceErrorBody('not-found', `no key store named "${ks}"`));
    send(res, 200, { keyStore: ks, policy: control.policy(ks) ?? null });
  });

  app.put(
    '/admin/v1/policies/:keyStore',
    ...operator,
    change('policy.set', (r) => ({ keyStore: String(r.params.keyStore) }), async (r) => {
      return policyOutcome(await control.setPolicy(String(r.params.keyStore), bodyField(r, 'policy'), actor(r), str(bodyField(r, 'reason'))));
    }),
  );

  app.delete(
    '/admin/v1/policies/:keyStore',
    ...operator,
    change('policy.delete', (r) => ({ keyStore: String(r.params.keyStore) }), async (r) => policyOutcome(await control.deletePolicy(String(r.params.keyStore), actor(r), str(bodyField(r, 'reason'))))),
  );

  /** 200 once applied; 202 while a loosening or deletion waits for the quorum. */
  function policyOutcome(out: PolicyChangeResult): { status: number; body: unknown; detail: string } {
    const detail = out.applied ? `${out.kind} applied${out.revision !== undefined ? `, revision ${out.revision}` : ', policy deleted'}` : `${out.kind} pending: ${out.approvers.length} of ${out.required} approvals`;
    return { status: out.applied ? 200 : 202, body: out, detail };
  }

  app.get('/admin/v1/key-stores', ...anyone, (_req, res) =>
    send(res, 200, { keyStores: registry.all().map((ks) => ({ name: ks.name, uriPath: ks.uriPath, keys: ks.keyList().map((k) => k.externalKeyId), accessKeyIds: ks.accessKeyIds(), fleetAccessKeyIds: ks.fleetAccessKeyIds() })) }),
  );

  app.post(
    '/admin/v1/key-stores/:name/credentials',
    ...operator,
    change('credentials.add', (r) => ({ keyStore: String(r.params.name) }), async (r) => {
      requireReason(r);
      const out = await addCredential(deps.config(), registry, String(r.params.name), deps.fleetCredentials);
      // The response carries the new secret (for KMS's UpdateCustomKeyStore); the record never does.
      return { status: 201, body: out, detail: `added ${out.accessKeyId}${atRevision(out.revision)}` };
    }),
  );

  app.delete(
    '/admin/v1/key-stores/:name/credentials/:akid',
    ...operator,
    change('credentials.remove', (r) => ({ keyStore: String(r.params.name), accessKeyId: String(r.params.akid) }), async (r) => {
      requireReason(r);
      const out = await removeCredential(deps.config(), registry, String(r.params.name), String(r.params.akid), deps.fleetCredentials);
      return { body: { removed: String(r.params.akid), ...out }, detail: `removed ${String(r.params.akid)}${atRevision(out.revision)}` };
    }),
  );

  app.post(
    '/admin/v1/reload',
    ...operator,
    change('config.reload', () => ({}), async (r) => {
      requireReason(r);
      if (!deps.reload) throw new ControlError('conflict', 'this process cannot reload its configuration');
      try {
        return { body: await deps.reload(), detail: 'configuration reloaded' };
      } catch (e) {
        // An invalid file is refused with every problem; the running configuration stays.
        if (e instanceof ConfigError) throw new ControlError('invalid', 'the configuration file is invalid; the running configuration stays', e.problems);
        throw e;
      }
    }),
  );

  app.post(
    '/admin/v1/key-versions/retire',
    ...operator,
    change('key-version.retire', (r) => ({ keyStore: str(bodyField(r, 'keyStore')), scope: `key:${str(bodyField(r, 'keyStore'))}/${str(bodyField(r, 'externalKeyId'))}#v${typeof bodyField(r, 'version') === 'number' ? String(bodyField(r, 'version')) : '?'}` }), async (r) => {
      requireReason(r);
      if (!deps.retireKeyVersion) throw new ControlError('conflict', 'this process cannot retire key versions: it has no control plane');
      const keyStore = str(bodyField(r, 'keyStore'));
      const externalKeyId = str(bodyField(r, 'externalKeyId'));
      // Only keys of the configuration: an operator token is no licence to destroy any object in the token.
      const keyLabel = registry.hsmKeyOf(keyStore, externalKeyId);
      if (keyLabel === undefined) throw new ControlError('not-found', `no key "${externalKeyId}" in key store "${keyStore}"`);
      const version = bodyField(r, 'version');
      const force = bodyField(r, 'forceRecentUse');
      if (typeof version !== 'number') throw new ControlError('invalid', 'version must be a number');
      if (force !== undefined && typeof force !== 'boolean') throw new ControlError('invalid', 'forceRecentUse must be true or false');
      const out = await deps.retireKeyVersion({ keyLabel, version, forceRecentUse: force === true, by: actor(r), reason: str(bodyField(r, 'reason')) });
      const detail = `hsmkey:${keyLabel}#v${version}${out.forceRecentUse ? ' force-recent-use' : ''}: ${out.retired ? `retired; approved by ${out.approvers.join(', ')}` : `pending: ${out.approvers.length} of ${out.required} approvals`}`;
      return { status: out.retired ? 200 : 202, body: out, detail };
    }),
  );

  function requireReason(r: Req): void {
    const reason = bodyField(r, 'reason');
    if (typeof reason !== 'string' || reason.trim() === '') throw new ControlError('invalid', 'a reason is required');
  }

  deps.extraRoutes?.(app, { reader: anyone });

  app.use((_req: express.Request, res: express.Response) => send(res, 404, serviceErrorBody('not-found', 'no such admin endpoint')));
  app.use((err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    const status = typeof (err as { status?: unknown }).status === 'number' ? (err as { status: number }).status : 500;
    if (status >= 500) log.error('admin request failed', { reason: err instanceof Error ? err.message : String(err) });
    send(res, status, serviceErrorBody(status === 400 ? 'invalid' : 'internal', status === 400 ? 'the request body is not valid JSON' : 'see the proxy log'));
  });
  return app;
}

export async function startAdminServer(deps: AdminServerDeps): Promise<RunningAdminServer> {
  const a = deps.admin;
  const auth = new OperatorAuth({ jwksFile: a.jwksFile, audience: a.audience, maxTokenLifetimeSeconds: a.maxTokenLifetimeSeconds, clockToleranceSeconds: a.clockToleranceSeconds, replayCacheSize: a.replayCacheSize, log: deps.log, ...(deps.claimJti ? { claimJti: deps.claimJti } : {}), ...(deps.now ? { now: deps.now } : {}) });
  const app = buildAdminApp(deps, auth);
  const common = { headersTimeout: 5000, requestTimeout: 30000, keepAliveTimeout: 5000 };
  const server = a.tls
    ? https.createServer({ ...common, ...tlsOptions(a.tls), ...(a.tls.clientCaFile ? { ca: fs.readFileSync(a.tls.clientCaFile), requestCert: true, rejectUnauthorized: true } : {}) }, app)
    : http.createServer(common, app);
  const { port } = await listen(server, a.port, a.host);
  deps.log.info('admin API listening', { host: a.host, port, tls: Boolean(a.tls), clientCertificates: Boolean(a.tls?.clientCaFile), audience: a.audience });
  return { port, auth, close: (graceMs = 1000) => closeServer(server, graceMs) };
}
