/**
 * What the bench reads about a process from /proc: peak and current RSS (VmHWM, VmRSS) and CPU
 * time used (utime + stime). Linux only, like the machine the targets are set for.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** Clock ticks per second for /proc/<pid>/stat; 100 on every Linux this runs on (getconf CLK_TCK). */
const CLK_TCK = 100;

export interface ProcSample {
  /** Peak resident set size so far, bytes (VmHWM). */
  peakRss: number;
  /** Resident set size now, bytes (VmRSS). */
  rss: number;
  /** CPU seconds used so far, user + system. */
  cpuSeconds: number;
}

export function sampleProc(pid: number): ProcSample | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
    return { peakRss: kb('VmHWM'), rss: kb('VmRSS'), cpuSeconds };
  } catch {
    return undefined;
  }
}

/** Pids whose command line contains `needle` (for services we did not start, e.g. postgres backends). */
export function pidsMatching(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes(needle)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** 1-minute load average, to say in the results whether the machine was busy with other work. */
export function loadAverage(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/**
 * Watches named processes while a scenario runs: keeps the last sample of each (VmHWM is a peak
 * the kernel keeps, so the last readable sample holds the process's peak even after it exits),
 * and CPU seconds between marks.
 */
export class ProcWatch {
  readonly #pids = new Map<string, number>();
  readonly #last = new Map<string, ProcSample>();
  /** Groups of processes found by a lookup (PostgreSQL backends): CPU of every pid ever seen. */
  readonly #groups = new Map<string, { find: () => number[]; cpu: Map<number, number> }>();
  #timer: NodeJS.Timeout | undefined;

  constructor(everyMs = 250) {
    this.#timer = setInterval(() => this.sampleAll(), everyMs);
    this.#timer.unref();
  }

  watch(name: string, pid: number | undefined): void {
    if (pid === undefined) return;
    this.#pids.set(name, pid);
    this.sampleAll();
  }

  /** A group of processes, looked up again at every sample; its CPU is the sum, its peak RSS the largest. */
  watchGroup(name: string, find: () => number[]): void {
    this.#groups.set(name, { find, cpu: new Map() });
    this.sampleAll();
  }

  names(): string[] {
    return [...this.#pids.keys()];
  }

  sampleAll(): Map<string, ProcSample> {
    for (const [name, pid] of this.#pids) {
      const sample = sampleProc(pid);
      // A zombie (exited, not yet reaped) shows no memory: keep the last real sample.
      if (sample && sample.peakRss > 0) this.#last.set(name, sample);
    }
    for (const [name, group] of this.#groups) {
      let peakRss = 0;
      let rss = 0;
      for (const pid of group.find()) {
        const sample = sampleProc(pid);
        if (!sample) continue;
        group.cpu.set(pid, sample.cpuSeconds);
        peakRss = Math.max(peakRss, sample.peakRss);
        rss += sample.rss;
      }
      const cpuSeconds = [...group.cpu.values()].reduce((a, b) => a + b, 0);
      this.#last.set(name, { peakRss, rss, cpuSeconds });
    }
    return new Map(this.#last);
  }

  /** Peak RSS in bytes of a watched process (the last one sampled). */
  peakRss(name: string): number | undefined {
    this.sampleAll();
    return this.#last.get(name)?.peakRss;
  }

  /** CPU seconds of every watched process now; subtract two of these to get a phase's use. */
  cpu(): Record<string, number> {
    const samples = this.sampleAll();
    return Object.fromEntries([...samples].map(([name, sample]) => [name, sample.cpuSeconds]));
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

export function cpuBetween(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.keys(after).map((name) => [name, (after[name] ?? 0) - (before[name] ?? 0)]));
}

/** Machine-wide CPU seconds so far: busy (all but idle and iowait) and total, over all cores. */
export function systemCpu(): { busy: number; total: number } {
  const first = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = first.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (first[3] ?? 0) + (first[4] ?? 0);
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}
