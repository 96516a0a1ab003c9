import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { runService } from '../shared/process.js';
import { startDashboard } from './dashboard.js';

await runService('dashboard', async () => {
  const config = loadConfig(['common', 'dashboard']);
  const logger = createLogger('dashboard', config.LOG_LEVEL);
  const dashboard = await startDashboard(config, logger);
  return { logger, service: dashboard };
});
