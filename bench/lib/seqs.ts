/**
 * Checks over a SeqLog (bench/keen-recorder.ts), shared by the bench and its sink processes
 * (yardstick-queue's drain, raw-ceiling): which sequence numbers of a range were not seen exactly
 * once, and the publish → arrival latency of those published after a warm-up.
 */
import type { SeqLog } from '../keen-recorder.js';

export interface SeqCheck {
  missing: number;
  duplicated: number;
  examples: number[];
}

export function checkSeqs(seqs: SeqLog, from: number, to: number): SeqCheck {
  seqs.ensure(to);
  const result: SeqCheck = { missing: 0, duplicated: 0, examples: [] };
  for (let seq = from; seq < to; seq++) {
    const count = seqs.count[seq]!;
    if (count === 1) continue;
    if (count === 0) result.missing += 1;
    else result.duplicated += 1;
    if (result.examples.length < 10) result.examples.push(seq);
  }
  return result;
}

/** Records one arrival of `seq` (published at `publishedAt`, ms) at `now`. */
export function recordSeq(seqs: SeqLog, seq: number, publishedAt: number, now: number): void {
  seqs.ensure(seq + 1);
  if (seq >= seqs.size) seqs.size = seq + 1;
  if (seqs.count[seq]! < 255) seqs.count[seq]! += 1;
  if (seqs.count[seq] === 1) {
    seqs.publishedAt[seq] = publishedAt;
    seqs.acceptedAt[seq] = now;
  }
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export interface Percentiles {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function percentiles(values: number[]): Percentiles {
  const sorted = Float64Array.from(values.filter(Number.isFinite)).sort();
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1]! : NaN,
  };
}

/** Publish → arrival (acceptedAt) of the seqs in [from, to) seen, published at or after `publishedAfter`. */
export function arrivalLatency(seqs: SeqLog, from: number, to: number, publishedAfter: number): Percentiles {
  const values: number[] = [];
  for (let seq = from; seq < Math.min(to, seqs.size); seq++) {
    if (seqs.count[seq] === 0 || !(seqs.publishedAt[seq]! >= publishedAfter)) continue;
    values.push(seqs.acceptedAt[seq]! - seqs.publishedAt[seq]!);
  }
  return percentiles(values);
}

/** The last time any seq in [from, to) arrived (0: none did). */
export function lastArrival(seqs: SeqLog, from: number, to: number): number {
  let last = 0;
  for (let seq = from; seq < Math.min(to, seqs.size); seq++) if (seqs.count[seq]! > 0) last = Math.max(last, seqs.acceptedAt[seq]!);
  return last;
}

/** What a sink process (drain, raw-ceiling) tells the bench over IPC. */
export type SinkReply =
  | { type: 'progress'; completed: number; firstAt: number; lastAt: number }
  | ({ type: 'checked'; lastAt: number; latency: Percentiles } & SeqCheck);
export type SinkCommand = { type: 'check'; from: number; to: number; publishedAfter: number };

/** Serves a sink process's side of the IPC: progress every 20 ms, and answers to checks. */
export function serveSink(seqs: SeqLog, progress: () => { completed: number; firstAt: number; lastAt: number }): void {
  const send = (reply: SinkReply) => process.send?.(reply);
  setInterval(() => send({ type: 'progress', ...progress() }), 20).unref();
  process.on('message', (command: SinkCommand) => {
    if (command.type !== 'check') return;
    send({
      type: 'checked',
      ...checkSeqs(seqs, command.from, command.to),
      lastAt: lastArrival(seqs, command.from, command.to),
      latency: arrivalLatency(seqs, command.from, command.to, command.publishedAfter),
    });
  });
  process.on('disconnect', () => process.exit(0));
}
