import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { createMetrics } from '../shared/metrics.js';
import { runService } from '../shared/process.js';
import { startSubscriber } from './subscriber.js';

await runService('subscriber', async () => {
  const config = loadConfig(['common', 'mqtt', 'subscriber']);
  const logger = createLogger('subscriber', config.LOG_LEVEL);
  const service = await startSubscriber(config, logger, createMetrics('subscriber'));
  return { service, logger };
});
