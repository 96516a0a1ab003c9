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
  const ops = await startOpsServer({ service: 'worker', port: config.METRICS_PORT ?? 9102, host: config.METRICS_HOST, metrics, logger });
  const worker = await startWorker(config, logger, metrics).catch(async (err: unknown) => {
    await ops.close();
    throw err;
  });
  ops.serve({ readiness: worker.readiness, beforeScrape: worker.refreshQueueGauges });
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
