/**
 * The browser explorer keen-sink serves at `/`: plain HTML, CSS and JavaScript from
 * src/keen-sink/explorer/ and Chart.js from node_modules, all read once at start-up. The pages
 * hold no key: the user types the read key into the page, which keeps it in the tab's
 * sessionStorage and sends it in the Authorization header of the same Keen queries any client
 * makes. A strict Content-Security-Policy allows only these files, so even a value planted in an
 * event that slipped past the pages' text-only rendering could not run as script.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ServerResponse } from 'node:http';
import path from 'node:path';

export const EXPLORER_DIRECTORY = path.resolve(import.meta.dirname, 'explorer');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

interface Asset {
  type: string;
  body: Buffer;
}

export class Explorer {
  private readonly assets = new Map<string, Asset>();

  /** Reads the pages; `projectId` is written into settings.json for the pages to find. */
  constructor(projectId: string, directory = EXPLORER_DIRECTORY) {
    for (const file of ['index.html', 'explorer.js', 'explorer.css']) {
      this.assets.set(`/explorer/${file}`, { type: TYPES[path.extname(file)]!, body: readFileSync(path.join(directory, file)) });
    }
    this.assets.set('/', this.assets.get('/explorer/index.html')!);
    const chart = path.join(path.dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js');
    this.assets.set('/explorer/chart.umd.min.js', { type: TYPES['.js']!, body: readFileSync(chart) });
    this.assets.set('/explorer/settings.json', {
      type: 'application/json; charset=utf-8',
      body: Buffer.from(JSON.stringify({ projectId })),
    });
  }

  /** Answers GET `pathname` if it is one of the explorer's files; false otherwise. */
  serve(pathname: string, res: ServerResponse): boolean {
    const asset = this.assets.get(pathname);
    if (!asset) return false;
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': asset.type, 'content-length': asset.body.length });
    res.end(asset.body);
    return true;
  }
}
