/**
 * The request's way through the appliance. Only this file knows the order:
 *
 *   route -> method -> [pre-auth slot] raw body (capped, deadline) -> lag shedding -> SigV4 over
 *   those bytes [slot released] -> in-flight bound -> quota -> JSON + field checks
 *   -> service (AAD, IV, CDIV, round trip) -> HSM -> one request-log record, committed to the file
 *   -> then the response (no request is answered before its record is kept).
 *
 * Unauthenticated work (a body still arriving, a signature not yet checked) is bounded on its own
 * (src/http/pre-auth.ts) and never counts against the capacity authenticated callers use.
 *
 * Load-balancer probes (spec "Load balancer health checks") are plain GETs, unauthenticated, that
 * never touch the HSM: liveness says the process serves; readiness reports the cached deep check.
 */
import express from 'express';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { KeyStoreRegistry } from './auth/key-stores';
import { OPEN_GATE, type AccessGate, type GateTicket } from './control/access-gate';
import { SigningKeyCache, verifySigV4 } from './auth/sigv4';
import type { Config } from './config/schema';
import { XksError, methodNotAllowed, toXksError } from './errors/xks-error';
import { readRawBody } from './http/body';
import type { OverloadGuard } from './http/overload';
import { OVER_BOUND_GRACE_MS, PreAuthLimiter, type PreAuthTicket } from './http/pre-auth';
import { sendError, sendJson } from './http/respond';
import type { AppLogger } from './log/logger';
import type { RequestLog, RequestRecord } from './log/request-log';
import { NOOP_METER, type Meter } from './metrics/meter';
import type { HealthMonitor } from './xks/health-monitor';
import { parseDecrypt, parseEncrypt, parseJsonBody, parseRequestMetadata } from './xks/requests';
import { resolveRoute, type Route } from './xks/routes';
import type { HsmTiming, XksService } from './xks/service';

export interface AppDeps {
  config: Readonly<Config>;
  registry: KeyStoreRegistry;
  service: XksService;
  health: HealthMonitor;
  requestLog: RequestLog;
  log: AppLogger;
  /** Kill switch, key blocking and allowlists; everything passes when absent. */
  gate?: AccessGate;
  /** Why the control state makes this node unfit to serve (fail closed for a fault), if it does. */
  controlFault?: () => string | undefined;
  /** Load shedding; none when absent. */
  overload?: OverloadGuard;
  /** Bound on requests not yet authenticated; built from config.server.preAuth when absent. */
  preAuth?: PreAuthLimiter;
  /** Request metrics; none when absent. */
  meter?: Meter;
  /** Clock for SigV4 date checks; injectable for tests. */
  now?: () => number;
}

type ProbeDeps = Pick<AppDeps, 'config' | 'health' | 'controlFault'>;

/**
 * Liveness and readiness answers (spec "Load balancer health checks"); never touch the HSM.
 * Not ready when the deep check failed, or when the control state cannot be trusted: the node then
 * refuses every call (fail closed) and a load balancer should send KMS elsewhere. An engaged kill
 * switch is not a fault: the node stays ready, so that KMS gets the spec's InvalidStateException.
 */
function probeAnswers(deps: ProbeDeps): Map<string, (res: ServerResponse) => void> {
  const { livePath, readyPath } = deps.config.healthEndpoints;
  return new Map([
    [livePath, (res: ServerResponse) => sendJson(res, 200, { status: 'ok' })],
    [
      readyPath,
      (res: ServerResponse) => {
        const h = deps.health.cached();
        const control = deps.controlFault?.();
        const ready = h !== undefined && h.status !== 'UNAVAILABLE' && control === undefined;
        sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', hsm: h?.status ?? 'UNKNOWN', checkedAt: h ? new Date(h.checkedAt).toISOString() : null, ...(control ? { control: 'fail-closed', reason: control } : {}) });
      },
    ],
  ]);
}

/** The probes on an express app (the optional plain-HTTP probe listener). */
export function addProbeRoutes(app: express.Express, deps: ProbeDeps): void {
  for (const [path, answer] of probeAnswers(deps)) app.get(path, (_req, res) => answer(res));
}

/**
 * The main listener's request handler. The XKS API is a fixed, small set of routes on the hot
 * path (KMS allows 250 ms per call and 1800+ calls per second per key store), so it is dispatched
 * directly rather than through a middleware chain; helmet's headers are applied by the response
 * writer (src/http/respond.ts). Probes are plain GETs; everything else is the XKS pipeline.
 */
export function buildApp(deps: AppDeps): RequestListener {
  const probes = probeAnswers(deps);
  const handle = xksHandler(deps);
  return (req, res) => {
    const probe = req.method === 'GET' || req.method === 'HEAD' ? probes.get(req.url ?? '') : undefined;
    if (probe) {
      probe(res);
      return;
    }
    handle(req, res).catch((err: unknown) => {
      // xksHandler catches everything; this is the last line of defence, never an HTML page.
      deps.log.error('unhandled error in request pipeline', { error: err instanceof Error ? err.message : String(err) });
      sendError(res, toXksError(err));
    });
  };
}

export function xksHandler(deps: AppDeps): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const { config, registry, service, requestLog, log } = deps;
  const gate = deps.gate ?? OPEN_GATE;
  const overload = deps.overload;
  const preAuth = deps.preAuth ?? new PreAuthLimiter(config.server.preAuth);
  const meter = deps.meter ?? NOOP_METER;
  const now = deps.now ?? Date.now;
  const keyCache = new SigningKeyCache();
  const limits = config.limits;
  const sigv4Opts = { clockSkewSeconds: config.sigv4.clockSkewSeconds };

  return async (req, res) => {
    const started = process.hrtime.bigint();
    const url = req.url ?? '/';
    const record: RequestRecord = { time: new Date().toISOString(), api: 'Unknown', outcome: 'ok', status: 200, latencyMs: 0 };
    const timing: HsmTiming = { hsmMs: 0 };
    // The answer is built in the try/catch and sent only after its record is committed (finally).
    let answer: () => void = () => undefined;
    let ticket: GateTicket | undefined;
    let unauthenticated: PreAuthTicket | undefined;
    let inFlight = false;
    try {
      const q = url.indexOf('?');
      const route: Route = resolveRoute(registry, q < 0 ? url : url.slice(0, q));
      record.api = route.api;
      record.keyStore = route.keyStore.name;
      record.externalKeyId = route.externalKeyId;
      // Spec: a GET on an API URI MUST be rejected with 405; so is any other non-POST method.
      if (req.method !== 'POST') throw methodNotAllowed(req.method);
      // HTTP/1.1 requires Host (RFC 9112 section 3.2) and SigV4 signs it (spec Appendix A).
      if (req.headers.host === undefined) throw new XksError('ValidationException', 'The Host header is required.', 'no Host header');
      // Until its body is in and its signature checks, a request holds a pre-authentication slot
      // (bounded in total and per peer), never the in-flight capacity of authenticated callers.
      // Beyond the bounds, only a body that is in at once (as KMS sends it) goes on, slot-less.
      const admission = preAuth.admit(req.socket.remoteAddress);
      unauthenticated = admission.ticket;
      const body = admission.ticket
        ? await readRawBody(req, config.server.maxBodyBytes, config.server.bodyTimeoutMs)
        : await readRawBody(req, config.server.maxBodyBytes, Math.min(OVER_BOUND_GRACE_MS, config.server.bodyTimeoutMs), () => preAuthRefused(admission.refused));
      // Over capacity: refuse before spending SigV4 or HSM work (spec: ThrottlingException when
      // the proxy "is unable to keep up").
      const shed = overload?.shedReason();
      if (shed) throw new XksError('ThrottlingException', 'The proxy is over capacity. Retry later.', `overload: ${shed}`).because('overload.lag');
      const caller = verifySigV4({ method: req.method, url, rawHeaders: req.rawHeaders, body }, route.keyStore, { ...sigv4Opts, now: now() }, keyCache);
      record.accessKeyId = caller.accessKeyId;
      unauthenticated?.release();
      // Authenticated: now it may take in-flight capacity (bounded for slow, network HSMs).
      const full = overload?.tryEnter();
      if (full) throw new XksError('ThrottlingException', 'The proxy is over capacity. Retry later.', `overload: ${full}`).because('overload.in_flight');
      inFlight = overload !== undefined;
      // The key store's own quota counts authenticated requests only, so that nobody without its
      // credentials can use it up.
      if (route.keyStore.quota && !route.keyStore.quota.take()) {
        throw new XksError('ThrottlingException', 'The request rate of this key store exceeds its quota.', `quota of key store ${route.keyStore.name}`).because('quota');
      }
      const json = parseJsonBody(body);
      const md = parseRequestMetadata(json, route.api);
      Object.assign(record, md);
      // Kill switch, key blocking, allowlists: after authentication, before any HSM call.
      const hsmKey = route.externalKeyId === undefined ? undefined : route.keyStore.key(route.externalKeyId)?.label;
      ticket = gate.enter({ keyStore: route.keyStore.name, api: route.api, externalKeyId: route.externalKeyId, hsmKey, metadata: md });
      record.allowedBy = ticket.allowedBy;
      const result = await dispatch(service, route, json, limits, timing, ticket.keyBlocked);
      answer = () => sendJson(res, 200, result);
    } catch (e) {
      const err = toXksError(e);
      record.outcome = 'error';
      record.errorName = err.errorName;
      record.status = err.status;
      record.reason = err.detail;
      record.reasonCode = err.reason;
      record.policyStatement = err.statement;
      if (err.errorName === 'InternalException') log.error('request failed', { api: record.api, keyStore: record.keyStore, reason: err.detail });
      answer = () => sendError(res, err);
    } finally {
      unauthenticated?.release();
      if (inFlight) overload!.leave();
      ticket?.done();
      record.latencyMs = Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100;
      if (timing.hsmMs > 0) record.hsmMs = Math.round(timing.hsmMs * 100) / 100;
      if (timing.aadLayout) record.aadLayout = timing.aadLayout;
      // Spec "Logging": every call is logged. Answer only once the record is in the file (group
      // commit across concurrent requests), so a killed process cannot leave an answered request
      // without its record. A record that cannot be written fails the request closed.
      try {
        await requestLog.commit(record);
      } catch (e) {
        log.error('request record not written; answering InternalException', { api: record.api, keyStore: record.keyStore, reason: (e as Error).message });
        Object.assign(record, { outcome: 'error', errorName: 'InternalException', status: 500, reason: 'audit record not written', reasonCode: 'audit.write_failed' });
        answer = () => sendError(res, new XksError('InternalException', undefined, 'audit record not written').because('audit.write_failed'));
      }
      meter.requestCompleted(record);
      answer();
    }
  };
}

/** Refusal of a request beyond the pre-authentication bounds whose body was not in at once; the rest is never read. */
function preAuthRefused(reason: string): XksError {
  const e = new XksError('ThrottlingException', 'Too many requests are waiting to be authenticated. Retry later.', `pre-auth: ${reason}`).because('pre_auth');
  e.closeConnection = true;
  return e;
}

function dispatch(service: XksService, route: Route, json: Record<string, unknown>, limits: Config['limits'], t: HsmTiming, keyBlocked: boolean): Promise<unknown> {
  const ks = route.keyStore;
  const id = route.externalKeyId!;
  switch (route.api) {
    case 'GetHealthStatus':
      return service.getHealthStatus(t);
    case 'GetKeyMetadata':
      return service.getKeyMetadata(ks, id, t, keyBlocked);
    case 'Encrypt':
      return service.encrypt(ks, id, parseEncrypt(json, limits), t);
    case 'Decrypt':
      return service.decrypt(ks, id, parseDecrypt(json, limits), t);
  }
}
