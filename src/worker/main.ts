import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { createMetrics } from '../shared/metrics.js';
import { startOpsServer } from '../shared/ops-server.js';
import { runService } from '../shared/process.js';
import { startWorker } from './worker.js';

await runService('worker', async () => {
  const config = loadConfig(['common', 'ops', 'mqtt', 'database', 'registry', 'worker', 'keen']);
  const logger = createLogger('worker', config.LOG_LEVEL);
  const metrics = createMetrics('worker');
  const worker = await startWorker(config, logger, metrics);
  const ops = await startOpsServer({
    port: config.METRICS_PORT ?? 9102,
    host: config.METRICS_HOST,
    metrics,
    readiness: worker.readiness,
    beforeScrape: worker.refreshQueueGauges,
    logger,
  });
  return {
    logger,
    service: {
      async close() {
        await worker.close();
        await ops.close();
      },
    },
  };
});
