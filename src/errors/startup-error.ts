/** A start-up failure an operator can act on: the CLI prints its message and exits non-zero. */
export class StartupError extends Error {}
