/**
 * Keeping secrets out of logs, error lines, job data and metrics: the one place that masks a
 * password in a connection URL before it is shown.
 */

/** `url` for logs and error lines: its password, in the authority or as `?password=` (libpq's form), masked. */
export function safeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    if (parsed.searchParams.has('password')) parsed.searchParams.set('password', '***');
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}
