/**
 * The shell every entry point runs in: one clear line for a startup problem the user can fix,
 * and an orderly shutdown on SIGTERM/SIGINT.
 */
import { redactUrl, type Logger } from './logger.js';
import { ConfigError, StartupError } from './errors.js';

export interface Service {
  close(): Promise<void>;
}

export async function runService(name: string, start: () => Promise<{ service: Service; logger: Logger }>): Promise<void> {
  let started: { service: Service; logger: Logger };
  try {
    started = await start();
  } catch (err) {
    if (err instanceof ConfigError || err instanceof StartupError) {
      process.stderr.write(`${name}: ${err.message}\n`);
    } else {
      process.stderr.write(`${name}: failed to start: ${redactUrl((err as Error).stack ?? String(err))}\n`);
    }
    process.exit(1);
  }
  const { service, logger } = started;
  let closing = false;
  const shutdown = (signal: string) => {
    if (closing) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    closing = true;
    logger.info({ signal }, 'shutting down');
    service.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while shutting down');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}
