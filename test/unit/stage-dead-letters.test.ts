/**
 * The keen-dead-letter and rejected-messages stages' pure handlers
 * (src/worker/stages/dead-letters.ts, rejected-messages.ts): park or redrive, how a redrive
 * meets what keen-delivery holds under the event's id, and the rejection log's failure text.
 */
import { describe, expect, it } from 'vitest';
import { buildKeenEvent } from '../../src/shared/events.js';
import type { DeadLetterJob, RejectedMessageJob } from '../../src/shared/jobs.js';
import { NO_REDRIVE_ID, planDeadLetter, planRedrive, redriveJobId } from '../../src/worker/stages/dead-letters.js';
import { rejectionFailure } from '../../src/worker/stages/rejected-messages.js';

const NOW = new Date('2026-12-03T13:00:00.000Z');
const letter = (extra: Partial<DeadLetterJob> = {}): DeadLetterJob => ({
  collection: 'devicestate',
  event: buildKeenEvent({ device_id: 'b827eb000001', state: { on: true } }, '2026-12-03T12:00:00.000Z', 'm1-devicestate'),
  sourceJobId: 'job-7',
  attemptsMade: 3,
  lastError: { message: 'Keen rejected the event: InvalidPropertyNameError: bad', status: 200, code: 'InvalidPropertyNameError' },
  failedAt: '2026-12-03T12:01:00.000Z',
  ...extra,
});

describe('dead-letter stage: park or redrive', () => {
  it('parks a new dead letter, marked first, failing with Keen’s error and what to do', () => {
    expect(planDeadLetter(letter(), 0)).toEqual({
      kind: 'park',
      markParked: true,
      reason: 'Keen rejected the event: InvalidPropertyNameError: bad',
      stack: [
        'Keen rejected the event: InvalidPropertyNameError: bad',
        '    dead-lettered after 3 attempts (HTTP 200, InvalidPropertyNameError) at 2026-12-03T12:01:00.000Z',
        '    Retry puts the event back into keen-delivery under its uniqueness token',
      ].join('\n'),
    });
  });

  it('says 1 attempt, leaves out an answer Keen never gave, and has a reason without an error message', () => {
    const plan = planDeadLetter(letter({ attemptsMade: 1, lastError: { message: '' } }), 0);
    expect(plan).toMatchObject({ kind: 'park', reason: 'failed for good without an error message' });
    if (plan.kind === 'park') expect(plan.stack.split('\n')[1]).toBe('    dead-lettered after 1 attempt at 2026-12-03T12:01:00.000Z');
  });

  it('parks again, without marking, a letter marked parked by a worker that died before failing it', () => {
    expect(planDeadLetter(letter({ parked: true }), 0)).toMatchObject({ kind: 'park', markParked: false });
  });

  it('redrives a parked letter an operator retried', () => {
    expect(planDeadLetter(letter({ parked: true }), 1)).toEqual({ kind: 'redrive' });
    // Not parked yet, however often it ran: parked first, never redriven without an operator.
    expect(planDeadLetter(letter(), 4)).toMatchObject({ kind: 'park', markParked: true });
  });
});

describe('dead-letter stage: a redrive', () => {
  it('adds the event alone under its uniqueness token, counting the redrive', () => {
    expect(redriveJobId(letter())).toBe('m1-devicestate');
    expect(planRedrive(letter(), undefined, NOW)).toEqual({
      kind: 'add',
      jobId: 'm1-devicestate',
      replace: false,
      name: 'devicestate',
      data: { events: [{ collection: 'devicestate', event: letter().event, redrives: { count: 1, lastAt: NOW.toISOString() } }] },
    });
    const again = planRedrive(letter({ redrives: { count: 2, lastAt: '2026-12-01T00:00:00.000Z' } }), undefined, NOW);
    expect(again.kind === 'add' && again.data.events[0]!.redrives).toEqual({ count: 3, lastAt: NOW.toISOString() });
  });

  it.each(['failed', 'completed'])('replaces an old %s copy under the same id', (state) => {
    expect(planRedrive(letter(), state, NOW)).toMatchObject({ kind: 'add', jobId: 'm1-devicestate', replace: true });
  });

  it('adds over a copy in no known state without removing it', () => {
    expect(planRedrive(letter(), 'unknown', NOW)).toMatchObject({ kind: 'add', replace: false });
  });

  it.each(['waiting', 'delayed', 'prioritized', 'waiting-children'])('adds nothing when keen-delivery has the event %s', (state) => {
    expect(planRedrive(letter(), state, NOW)).toEqual({ kind: 'already-queued', jobId: 'm1-devicestate', state });
  });

  it('refuses while the event is being delivered, and without a uniqueness token', () => {
    expect(planRedrive(letter(), 'active', NOW)).toEqual({
      kind: 'refuse',
      message: 'keen-delivery job m1-devicestate is being delivered right now; retry the dead letter once it has finished',
    });
    for (const event of [{}, { keen: {} }, { keen: { uniqueness_token: '' } }, { keen: { uniqueness_token: 7 } }]) {
      const odd = letter({ event: event as DeadLetterJob['event'] });
      expect(redriveJobId(odd)).toBeUndefined();
      expect(planRedrive(odd, undefined, NOW)).toEqual({ kind: 'refuse', message: NO_REDRIVE_ID });
    }
  });
});

describe('rejected-messages stage', () => {
  it('fails each record with its reason and detail, and any other job with what it lacks', () => {
    const record: RejectedMessageJob = {
      topic: 'devices/zz/lamp/changed',
      reason: 'invalid_device_id',
      detail: 'device id must be 1-12 hex characters',
      payloadBytes: 2,
      payloadHead: Buffer.from('{}').toString('base64'),
      receivedAt: '2026-12-03T12:00:00.000Z',
    };
    expect(rejectionFailure(record)).toBe('invalid_device_id: device id must be 1-12 hex characters');
    for (const odd of [null, undefined, 7, {}]) expect(rejectionFailure(odd as unknown as RejectedMessageJob)).toBe('no reason: no detail');
  });
});
