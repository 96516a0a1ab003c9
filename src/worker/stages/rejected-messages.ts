/**
 * The rejected-messages stage, as a pure handler: a rejection record is failed on arrival, and
 * this is its failure, so the dashboard's Failed list of `rejected-messages` reads as the
 * rejection log. No I/O, never throws, whatever the record holds (this stage takes any job).
 */
import type { RejectedMessageJob } from '../../shared/jobs.js';

export function rejectionFailure(data: RejectedMessageJob): string {
  const { reason, detail } = (typeof data === 'object' && data !== null ? data : {}) as Partial<RejectedMessageJob>;
  return `${reason ?? 'no reason'}: ${detail ?? 'no detail'}`;
}
