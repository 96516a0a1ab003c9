/**
 * `npm run keen-sink`: a Keen-compatible analytics store over PostgreSQL (see README.md here).
 * Applies its own migrations (src/keen-sink/migrations, bookkeeping in _keen_sink_migrations)
 * on start. A startup problem is one line on stderr and exit 1.
 */
import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { runService } from '../shared/process.js';
import { startKeenSink } from './server.js';
import { safeUrl } from '../shared/redact.js';

await runService('keen-sink', async () => {
  const config = loadConfig(['common', 'keenSink']);
  const logger = createLogger('keen-sink', config.LOG_LEVEL);
  const sink = await startKeenSink({
    databaseUrl: config.KEEN_SINK_DATABASE_URL,
    projectId: config.KEEN_PROJECT_ID,
    writeKey: config.KEEN_WRITE_KEY,
    readKey: config.KEEN_READ_KEY,
    port: config.KEEN_SINK_PORT,
    host: config.KEEN_SINK_HOST,
    maxResultBytes: config.KEEN_SINK_MAX_RESULT_BYTES,
    corsOrigins: config.KEEN_SINK_CORS_ORIGINS,
    logger,
  });
  logger.info(
    { port: sink.port, host: config.KEEN_SINK_HOST, project: config.KEEN_PROJECT_ID, database: safeUrl(config.KEEN_SINK_DATABASE_URL) },
    'keen-sink ready',
  );
  logger.info(
    { url: `http://${config.KEEN_SINK_HOST === '0.0.0.0' ? 'localhost' : config.KEEN_SINK_HOST}:${sink.port}/` },
    'explorer: open this in a browser and enter the read key',
  );
  return { service: sink, logger };
});
