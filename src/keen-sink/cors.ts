/**
 * CORS for the origins the operator lists (KEEN_SINK_CORS_ORIGINS), so that a web page's Keen
 * clients (keen-analysis, keen-tracking) may call keen-sink from another origin. Nothing is
 * allowed by default. Keys travel in the Authorization header or ?api_key=, never in cookies, so
 * credentials are never allowed: a page must hold the key itself.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface CorsOptions {
  /** Exact origins ("https://lamps.example.com"), or "*" for any. Default: none. */
  origins?: readonly string[];
  /** How long a browser may cache a preflight answer, in seconds. Default 600. */
  maxAgeSeconds?: number;
}

const ALLOWED_METHODS = 'GET, POST, OPTIONS';
// Keen's JavaScript SDKs name themselves in a keen-sdk header.
const ALLOWED_HEADERS = 'Authorization, Content-Type, Keen-Sdk';

export class Cors {
  private readonly any: boolean;
  private readonly origins: ReadonlySet<string>;
  private readonly maxAge: string;

  constructor(options: CorsOptions = {}) {
    const origins = options.origins ?? [];
    this.any = origins.includes('*');
    this.origins = new Set(origins);
    this.maxAge = String(options.maxAgeSeconds ?? 600);
  }

  /** Whether a request from `origin` may read keen-sink's answers. */
  allows(origin: string | undefined): origin is string {
    return origin !== undefined && (this.any || this.origins.has(origin));
  }

  /**
   * Adds the CORS headers a response to `req` needs. Answers a preflight (OPTIONS with
   * Access-Control-Request-Method) itself and returns true; a preflight from an origin not
   * allowed gets 403 with Keen's error body, which the browser reports as a CORS failure.
   */
  handle(req: IncomingMessage, res: ServerResponse): boolean {
    const origin = req.headers.origin;
    // The answer depends on Origin: caches must not hand one origin's answer to another.
    res.setHeader('vary', 'Origin');
    const allowed = this.allows(origin);
    if (allowed) res.setHeader('access-control-allow-origin', origin);
    const preflight = req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined;
    if (!preflight) return false;
    if (!allowed) {
      const body = JSON.stringify({
        message: `Origin ${String(origin).slice(0, 200)} may not call this keen-sink: add it to KEEN_SINK_CORS_ORIGINS.`,
        error_code: 'CorsOriginNotAllowedError',
      });
      res.writeHead(403, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return true;
    }
    res.writeHead(204, {
      'access-control-allow-methods': ALLOWED_METHODS,
      'access-control-allow-headers': ALLOWED_HEADERS,
      'access-control-max-age': this.maxAge,
      'content-length': '0',
    });
    res.end();
    return true;
  }
}
