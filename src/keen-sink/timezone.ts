/**
 * Keen's `timezone` query parameter: an offset in seconds east of UTC, or a named IANA zone
 * ("Europe/Berlin", "US/Pacific"). Relative timeframes and day-or-longer intervals are computed
 * on the zone's wall clock, so a named zone's days follow its daylight-saving changes (a day may
 * last 23 or 25 hours). The parser never throws: it answers a discriminated union.
 */

export interface TimeZone {
  /** As the query named it canonically: "UTC", "+3600" seconds, or the IANA name. */
  readonly name: string;
  /** Milliseconds the wall clock is ahead of UTC at `instant`. */
  offsetAt(instant: Date): number;
}

/** Wall-clock time of `instant` in `zone`, expressed as a Date whose UTC fields are that clock. */
export function toWallClock(zone: TimeZone, instant: Date): Date {
  return new Date(instant.getTime() + zone.offsetAt(instant));
}

/**
 * The instant at which `zone`'s wall clock shows `wallClock` (UTC fields). A wall-clock time
 * shown twice (clocks set back) maps to its first occurrence; one skipped by a jump forward maps
 * to the reading the jump leads to (02:30 on a one-hour jump at 02:00 becomes 03:30).
 */
export function fromWallClock(zone: TimeZone, wallClock: Date): Date {
  const local = wallClock.getTime();
  const first = local - zone.offsetAt(new Date(local));
  const second = local - zone.offsetAt(new Date(first));
  if (second === first) return new Date(first);
  // Around a change the two guesses differ: keep the earlier one whose clock reads `wallClock`,
  // else (a skipped time) the later one.
  const readsBack = (candidate: number) => candidate + zone.offsetAt(new Date(candidate)) === local;
  if (readsBack(Math.min(first, second))) return new Date(Math.min(first, second));
  if (readsBack(Math.max(first, second))) return new Date(Math.max(first, second));
  return new Date(Math.max(first, second));
}

export const UTC: TimeZone = { name: 'UTC', offsetAt: () => 0 };

/** Keen accepts offsets up to 14 hours either way. */
const MAX_OFFSET_SECONDS = 14 * 3600;

export function fixedOffset(seconds: number): TimeZone {
  if (seconds === 0) return UTC;
  const ms = seconds * 1000;
  return { name: String(seconds), offsetAt: () => ms };
}

const namedZones = new Map<string, TimeZone>();

function namedZone(name: string): TimeZone | undefined {
  const cached = namedZones.get(name);
  if (cached) return cached;
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: name,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
  } catch {
    return undefined;
  }
  const zone: TimeZone = {
    name: format.resolvedOptions().timeZone,
    offsetAt(instant) {
      const parts: Record<string, number> = {};
      for (const part of format.formatToParts(instant)) if (part.type !== 'literal') parts[part.type] = Number(part.value);
      const wall = Date.UTC(parts.year!, parts.month! - 1, parts.day!, parts.hour!, parts.minute!, parts.second!);
      const whole = instant.getTime() - (((instant.getTime() % 1000) + 1000) % 1000);
      return wall - whole;
    },
  };
  // Bounded: a stranger must not grow this map with distinct spellings of zones.
  if (namedZones.size < 1000) namedZones.set(name, zone);
  return zone;
}

export type TimeZoneParse = { ok: true; zone: TimeZone } | { ok: false; message: string };

export function parseTimeZone(raw: unknown): TimeZoneParse {
  if (raw === undefined || raw === null || raw === '') return { ok: true, zone: UTC };
  if (typeof raw === 'string' && /^(UTC|Etc\/UTC|GMT|Z)$/i.test(raw.trim())) return { ok: true, zone: UTC };
  const numeric = typeof raw === 'string' && /^[+-]?\d+$/.test(raw.trim()) ? Number(raw) : raw;
  if (typeof numeric === 'number') {
    if (Number.isInteger(numeric) && Math.abs(numeric) <= MAX_OFFSET_SECONDS) return { ok: true, zone: fixedOffset(numeric) };
    return {
      ok: false,
      message:
        `timezone ${String(numeric).slice(0, 40)} is out of range: ` +
        `an offset is whole seconds from UTC, at most ${MAX_OFFSET_SECONDS} either way (e.g. -28800).`,
    };
  }
  // IANA names are letters, digits, "/", "_", "+" and "-"; anything else is refused before
  // reaching Intl (which also accepts odd spellings such as offsets in "+01:00" form).
  if (typeof raw === 'string' && raw.length <= 64 && /^[A-Za-z][A-Za-z0-9_+/-]*$/.test(raw)) {
    const zone = namedZone(raw);
    if (zone) return { ok: true, zone };
  }
  return {
    ok: false,
    message:
      `timezone "${String(raw).slice(0, 64)}" is not a time zone: ` +
      'use an IANA name (e.g. "Europe/Berlin") or an offset from UTC in seconds (e.g. -28800).',
  };
}
