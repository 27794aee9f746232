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
  // Not an XKS error name: the spec only says GET on an API URI MUST answer 405. We still answer
  // with a JSON body so that nothing ever sees an HTML page.
  MethodNotAllowed: 405,
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
  MethodNotAllowed: 'Method not allowed: the XKS APIs accept POST only.',
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

  constructor(errorName: ErrorName, publicMessage?: string, detail?: string) {
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
    this.status = ERROR_STATUS[errorName];
    this.detail = detail;
  }

  toBody(): { errorName: string; errorMessage: string } {
    return { errorName: this.errorName, errorMessage: this.message };
  }
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
