/**
 * A pass-through HTTP proxy between one worker and the fake Keen. It tells which worker has a
 * bulk request under way, so the run can kill that very worker in the middle of a Keen batch,
 * and it can hold back Keen's answer to the next request: Keen has recorded the events, the
 * worker never learns it, and dies.
 *
 * Faults of the fake Keen pass through: an upstream reset resets the worker's connection, an
 * upstream that never answers leaves the worker waiting until its own timeout.
 */
import { Agent, createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface KeenProxy {
  url: string;
  /** Requests forwarded and not yet answered. */
  readonly inFlight: number;
  readonly forwarded: number;
  /**
   * The next request is forwarded, and Keen's answer to it withheld for good. Resolves once
   * Keen has answered it (the events are stored at Keen).
   */
  holdNextAnswer(): Promise<{ eventsInBatch: number; status: number }>;
  close(): Promise<void>;
}

export async function startKeenProxy(upstreamUrl: string): Promise<KeenProxy> {
  const upstream = new URL(upstreamUrl);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const sockets = new Set<Socket>();
  let inFlight = 0;
  let forwarded = 0;
  let hold: ((answer: { eventsInBatch: number; status: number }) => void) | undefined;

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    forwarded += 1;
    inFlight += 1;
    let done = false;
    const finish = () => {
      if (!done) {
        done = true;
        inFlight -= 1;
      }
    };
    const holdThis = hold;
    hold = undefined;
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => {});
    res.on('error', () => {});
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const up = request(
        {
          host: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: upstream.host, 'content-length': String(body.length) },
          agent,
        },
        (answer) => {
          const parts: Buffer[] = [];
          answer.on('data', (chunk: Buffer) => parts.push(chunk));
          answer.on('error', () => {
            finish();
            req.socket.destroy();
          });
          answer.on('end', () => {
            if (holdThis) {
              // Keen has the events; the worker is never told.
              holdThis({ eventsInBatch: countEvents(body), status: answer.statusCode ?? 0 });
              return;
            }
            finish();
            const headers = { ...answer.headers };
            delete headers['transfer-encoding'];
            delete headers.connection;
            res.writeHead(answer.statusCode ?? 502, { ...headers, 'content-length': String(Buffer.concat(parts).length) });
            res.end(Buffer.concat(parts));
          });
        },
      );
      up.on('error', () => {
        // Keen reset the connection (or went away): so does the proxy.
        finish();
        req.socket.destroy();
      });
      up.end(body);
      // The worker gave up (its timeout): stop waiting for Keen too.
      res.on('close', () => {
        finish();
        if (!res.writableFinished) up.destroy();
      });
    });
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get inFlight() {
      return inFlight;
    },
    get forwarded() {
      return forwarded;
    },
    holdNextAnswer() {
      return new Promise((resolve) => {
        hold = resolve;
      });
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function countEvents(body: Buffer): number {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as Record<string, unknown[]>;
    return Object.values(parsed).reduce((n, list) => n + (Array.isArray(list) ? list.length : 0), 0);
  } catch {
    return 0;
  }
}
