// Typed errors. The library throws these; only the CLI entry turns them into a message and an exit code.

export const ExitCode = {
  ok: 0,
  internal: 1,
  badInput: 2,
  verification: 3,
  hostEnvironment: 4,
  interrupted: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export abstract class BrambleError extends Error {
  abstract readonly exitCode: ExitCodeValue;
  /** One line telling the user what to do about it. */
  readonly hint?: string;
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options?.hint;
    this.name = new.target.name;
  }
}

/** A problem in cluster.toml (or a --sources file): names the key path and, when known, the line. */
export class ConfigError extends BrambleError {
  readonly exitCode = ExitCode.badInput;
  constructor(
    readonly file: string,
    readonly keyPath: string,
    readonly line: number | undefined,
    readonly problem: string,
    hint?: string,
  ) {
    super(`${file}${line ? `:${line}` : ''}: ${keyPath ? `${keyPath}: ` : ''}${problem}`, { hint });
  }
}

/** Several config problems found in one pass, reported together. */
export class ConfigErrors extends BrambleError {
  readonly exitCode = ExitCode.badInput;
  constructor(readonly errors: ConfigError[]) {
    super(errors.map((e) => e.message + (e.hint ? `\n    hint: ${e.hint}` : '')).join('\n'));
  }
}

/** Bad command-line usage. */
export class UsageError extends BrambleError {
  readonly exitCode = ExitCode.badInput;
}

/** Any other bad input that is not the config: a missing PKI file, a malformed image given to inspect, ... */
export class InputError extends BrambleError {
  readonly exitCode = ExitCode.badInput;
}

/** A checksum, signature, digest or read-back did not match. */
export class VerificationError extends BrambleError {
  readonly exitCode = ExitCode.verification;
  constructor(
    readonly subject: string,
    readonly expected: string,
    readonly actual: string,
    options?: { cause?: unknown; hint?: string },
  ) {
    super(`${subject}: verification failed (expected ${expected}, got ${actual})`, options);
  }
}

/** The host lacks a tool, space, permission or network access the work needs. */
export class HostError extends BrambleError {
  readonly exitCode = ExitCode.hostEnvironment;
}

export class HostToolError extends HostError {
  constructor(
    readonly tool: string,
    message: string,
    options?: { cause?: unknown; hint?: string },
  ) {
    super(message, options);
  }
}

/** The user interrupted the run (Ctrl-C) or an AbortSignal fired. */
export class InterruptedError extends BrambleError {
  readonly exitCode = ExitCode.interrupted;
  constructor(message = 'interrupted') {
    super(message);
  }
}

export function isBrambleError(e: unknown): e is BrambleError {
  return e instanceof BrambleError;
}

/** Wrap an unknown failure with the context of a stage, keeping typed errors as they are. */
export function withContext(e: unknown, context: string): never {
  if (e instanceof BrambleError) throw e;
  if (e instanceof Error && e.name === 'AbortError') throw new InterruptedError();
  throw new Error(`${context}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}
