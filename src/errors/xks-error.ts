/**
 * The one error model of the appliance (spec section "Error codes").
 *
 * Every failure that reaches a client is an XksError: it carries the spec's errorName, the HTTP
 * status the spec assigns to that name, a public message (printable ASCII, < 512 characters, safe
 * to show to KMS) and, separately, internal detail that only goes to the log.
 */

/** errorName -> HTTP status, exactly the spec's table. */
export const ERROR_STATUS = {
  ValidationException: 400,
  InvalidStateException: 400,
  InvalidCiphertextException: 400,
  InvalidKeyUsageException: 400,
  AuthenticationFailedException: 401,
  AccessDeniedException: 403,
  KeyNotFoundException: 404,
  InvalidUriPathException: 404,
  ThrottlingException: 429,
  UnsupportedOperationException: 501,
  DependencyTimeoutException: 503,
  InternalException: 500,
} as const;

export type ErrorName = keyof typeof ERROR_STATUS;

/** Default public messages: generic on purpose; detail goes to the log, never to the client. */
const DEFAULT_MESSAGE: Record<ErrorName, string> = {
  ValidationException: 'The request was rejected because one or more input parameters is invalid.',
  InvalidStateException: 'The external key or key store is disabled, deactivated or blocked.',
  InvalidCiphertextException:
    'The ciphertext, initialization vector, additional authenticated data or authentication tag is corrupted, missing, or otherwise invalid.',
  InvalidKeyUsageException: 'The external key does not support the requested operation.',
  AuthenticationFailedException: 'The request signature could not be verified. See the proxy log for the reason.',
  AccessDeniedException: 'The operation is not authorized by the proxy policy.',
  KeyNotFoundException: 'The external key was not found.',
  InvalidUriPathException: 'The URI path is not valid.',
  ThrottlingException: 'The request rate is too high.',
  UnsupportedOperationException: 'The operation or a parameter size is not supported.',
  DependencyTimeoutException: 'The proxy timed out while waiting for the external key manager.',
  InternalException: 'Internal error in the proxy or the external key manager. See the proxy log.',
};

export class XksError extends Error {
  readonly errorName: ErrorName;
  readonly status: number;
  /** Goes to the log only. Must never contain plaintext, AAD, secrets or PINs. */
  readonly detail: string | undefined;
  /** Set when the request body was left unread: the response must close the connection. */
  closeConnection = false;
  /** For AccessDeniedException: the policy statement responsible (spec "Authorization": log it). */
  statement: string | undefined;
  /**
   * A stable, bounded code for why (e.g. "sigv4.clock_skew"), read by metrics, the request log and
   * the audit log; `detail` is wording for people and free to change.
   */
  reason: string | undefined;

  /**
   * `status` overrides the table's status only where HTTP itself requires another one for the
   * same meaning (405 for a method, 417 for an expectation): the errorName stays a spec name.
   */
  constructor(errorName: ErrorName, publicMessage?: string, detail?: string, status?: number) {
    // An XksError is an answer, not a bug: nothing reads its stack, and capturing one cost ~9 us,
    // the largest share of a 429 under overload after the socket write.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(sanitizeMessage(publicMessage ?? DEFAULT_MESSAGE[errorName]));
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    this.name = 'XksError';
    this.errorName = errorName;
    this.status = status ?? ERROR_STATUS[errorName];
    this.detail = detail;
  }

  /** Sets the structured reason code (see `reason`) and returns the error. */
  because(reason: string): this {
    this.reason = reason;
    return this;
  }

  toBody(): { errorName: string; errorMessage: string } {
    return { errorName: this.errorName, errorMessage: this.message };
  }
}

/**
 * A method other than POST on an API URI (or CONNECT anywhere). Spec "API operations": a GET on
 * any of the four API URIs MUST be rejected with 405 Method Not Allowed, but the spec's error table
 * has no name for it, and an answer without a listed errorName is "uninterpretable" to KMS. Of the
 * listed names, UnsupportedOperationException fits: it applies to ALL four APIs (health included,
 * which ValidationException does not) and means "the requested operation is not implemented",
 * which is what another method asks for. The status stays the 405 the spec demands; the response
 * writer adds `Allow: POST`.
 */
export function methodNotAllowed(method: string | undefined): XksError {
  return new XksError('UnsupportedOperationException', 'Method not allowed: the XKS APIs accept POST only.', `method ${method ?? '(none)'}`, 405);
}

/** Spec: errorMessage MUST be < 512 characters of printable ASCII (0x20-0x7e). */
export function sanitizeMessage(msg: string): string {
  const printable = msg.replace(/[^\x20-\x7e]/g, '?');
  return printable.length < 512 ? printable : printable.slice(0, 508) + '...';
}

export function isXksError(e: unknown): e is XksError {
  return e instanceof XksError;
}

/** Anything that is not already an XksError becomes an InternalException; the cause goes to the log. */
export function toXksError(e: unknown): XksError {
  if (isXksError(e)) return e;
  const detail = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new XksError('InternalException', undefined, detail);
}
