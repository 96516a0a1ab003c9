/**
 * The ingest stages' workers, made from one set of options: lamp states (the lamp-states queue,
 * lamp-states-worker.ts) and bridge states (one ordered worker per partition,
 * bridge-states-worker.ts). Everything that touches the device registry runs here.
 */
import type { Worker } from 'bullmq';
import { createBridgeStatesWorkers } from './bridge-states-worker.js';
import type { IngestWorkerOptions } from './ingest-effects.js';
import { createLampStatesWorker } from './lamp-states-worker.js';

export type { IngestWorkerOptions } from './ingest-effects.js';

export function createIngestWorkers(options: IngestWorkerOptions): Worker[] {
  return [createLampStatesWorker(options), ...createBridgeStatesWorkers(options)];
}
