/**
 * Which strings no analytics store can hold, pure and never throwing. JSON lets a sender write
 * a NUL (`\u0000`) or half of a UTF-16 surrogate pair (`\ud800`); PostgreSQL's text and jsonb
 * refuse both (and Keen, on top of it, cannot store what it cannot encode as UTF-8), so such a
 * string is refused where it enters rather than failing a whole request further on.
 */

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** What makes `value` unstorable ("a NUL character", "a lone UTF-16 surrogate"), or undefined. */
export function unstorableText(value: string): string | undefined {
  if (value.includes('\u0000')) return 'a NUL character (\\u0000)';
  if (LONE_SURROGATE.test(value)) return 'a lone UTF-16 surrogate (half of a \\uD800-\\uDFFF pair)';
  return undefined;
}
