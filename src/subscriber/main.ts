import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { createMetrics } from '../shared/metrics.js';
import { startOpsServer } from '../shared/ops-server.js';
import { runService } from '../shared/process.js';
import { startSubscriber } from './subscriber.js';

await runService('subscriber', async () => {
  const config = loadConfig(['common', 'ops', 'mqtt', 'subscriber']);
  const logger = createLogger('subscriber', config.LOG_LEVEL);
  const metrics = createMetrics('subscriber');
  const ops = await startOpsServer({
    service: 'subscriber',
    port: config.METRICS_PORT ?? 9101,
    host: config.METRICS_HOST,
    metrics,
    logger,
  });
  const subscriber = await startSubscriber(config, logger, metrics).catch(async (err: unknown) => {
    await ops.close();
    throw err;
  });
  ops.serve({ readiness: subscriber.readiness, beforeScrape: subscriber.refreshQueueGauges });
  return {
    logger,
    service: {
      async close() {
        await subscriber.close();
        await ops.close();
      },
    },
  };
});
