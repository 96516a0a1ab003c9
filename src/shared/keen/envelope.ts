/**
 * The `keen` envelope every event carries, and the `keen:date_time_parser` add-on: the shape a
 * sender writes and what the add-on outputs, defined once. Pure; validation of a received
 * envelope is protocol.ts's.
 */

export const DATE_TIME_PARSER_NAME = 'keen:date_time_parser';

/** The add-on as we ask for it: the parts of the event's own `keen.timestamp`, in `timestamp.info`. */
export const DATE_TIME_PARSER = {
  name: DATE_TIME_PARSER_NAME,
  input: { date_time: 'keen.timestamp' },
  output: 'timestamp.info',
} as const;

/** What a sender puts in `keen`: the event's time, its token (Keen keeps the first event per token), the add-ons. */
export interface KeenEnvelope {
  timestamp: string;
  uniqueness_token: string;
  addons: Array<typeof DATE_TIME_PARSER>;
}

export function keenEnvelope(timestamp: string, uniquenessToken: string): KeenEnvelope {
  return { timestamp, uniqueness_token: uniquenessToken, addons: [DATE_TIME_PARSER] };
}

const DAY_NAMES = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/**
 * What `keen:date_time_parser` writes, in UTC. day_of_week and week follow ISO 8601
 * (Monday = 1 ... Sunday = 7; week 1 holds the year's first Thursday).
 */
export function dateTimeInfo(date: Date): Record<string, number | string> {
  const isoDay = date.getUTCDay() === 0 ? 7 : date.getUTCDay();
  const thursday = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate() + 4 - isoDay));
  const yearStart = Date.UTC(thursday.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((thursday.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return {
    millisecond: date.getUTCMilliseconds(),
    second: date.getUTCSeconds(),
    minute: date.getUTCMinutes(),
    hour: date.getUTCHours(),
    day_of_week: isoDay,
    day_of_week_string: DAY_NAMES[date.getUTCDay()]!,
    day_of_month: date.getUTCDate(),
    week,
    month: date.getUTCMonth() + 1,
    year: date.getUTCFullYear(),
    timezone_offset: 0,
  };
}
