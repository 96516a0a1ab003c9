/**
 * The errors a user acts on, each with a stable code (as fastify and BullMQ do it), so that code
 * and tests recognise an error by its class or code, never by its text. Every message is the
 * whole line the user reads: what is wrong, naming the setting or service, and what to do.
 * `describeError` is the one short form of any error for a log field or such a line.
 */

/** The base of our errors: `code` is stable across releases; the message may be reworded. */
export abstract class LampiError extends Error {
  abstract readonly code: string;
}

/** A setting is missing or invalid; the message names each variable and what it must be. */
export class ConfigError extends LampiError {
  override name = 'ConfigError';
  readonly code = 'LAMPI_CONFIG_INVALID';
}

/** A process cannot start: a service it needs is unreachable or refuses it. */
export class StartupError extends LampiError {
  override name = 'StartupError';
  readonly code: string = 'LAMPI_STARTUP_FAILED';
}

/** An MQTT broker refused our login at start-up: a fault of the settings, never waited out. */
export class MqttLoginError extends StartupError {
  override name = 'MqttLoginError';
  override readonly code = 'LAMPI_MQTT_LOGIN_REFUSED';
}

/** PostgreSQL refused us at start-up (password, role, database, missing tables). */
export class DatabaseSetupError extends StartupError {
  override name = 'DatabaseSetupError';
  override readonly code = 'LAMPI_DATABASE_SETUP';
}

/** A migration could not be applied, or the applied ones do not match the files. */
export class MigrationError extends LampiError {
  override name = 'MigrationError';
  readonly code: string = 'LAMPI_MIGRATION_FAILED';
}

/** A migration's SQL failed: its transaction rolled back, so nothing of it was applied. */
export class MigrationRolledBackError extends MigrationError {
  override name = 'MigrationRolledBackError';
  override readonly code = 'LAMPI_MIGRATION_ROLLED_BACK';
}

/** A command-line tool (dlq, devices) was called wrongly; the tool prints its usage line after the message. */
export class UsageError extends LampiError {
  override name = 'UsageError';
  readonly code = 'LAMPI_USAGE';
}

/** A wait that ran out. */
export class TimeoutError extends LampiError {
  override name = 'TimeoutError';
  readonly code = 'LAMPI_TIMEOUT';
}

/**
 * The short form of `err` for a log field or a one-line message: a system error's code
 * (ECONNREFUSED, ...), else its message; an AggregateError (a connect tried on every address)
 * by its first error.
 */
export function describeError(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return describeError(err.errors[0]);
  if (err instanceof Error) return (err as NodeJS.ErrnoException).code ?? err.message;
  return String(err);
}
