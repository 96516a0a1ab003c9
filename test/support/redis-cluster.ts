/**
 * A real local Redis Cluster for tests and the bench: three primaries and three replicas, each a
 * `redis-server --cluster-enabled yes` of its own on free ports in a temporary folder, joined by
 * `redis-cli --cluster create`. Ready once every node says `cluster_state:ok` and every replica's
 * link to its primary is up; stop() kills every node and removes the folder.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort, startRedis, waitFor, type ManagedProcess } from './processes.js';

const run = promisify(execFile);

export interface ClusterNode {
  port: number;
  proc: ManagedProcess;
}

export interface RedisCluster {
  nodes: ClusterNode[];
  /** `host:port,…` of every node: the value of REDIS_CLUSTER_NODES. */
  seeds: string;
  dir: string;
  /** The port of the primary that owns the slot of `key` now. */
  primaryFor(key: string): Promise<number>;
  /** The ports of the current primaries. */
  primaries(): Promise<number[]>;
  /** Kills the node on this port at once (SIGKILL, no chance to replicate what it has not). */
  kill(port: number): Promise<void>;
  stop(): Promise<void>;
}

/** Why this machine cannot run a local cluster, or undefined when it can. */
export function clusterUnsupported(): string | undefined {
  try {
    const version = execFileSync('redis-server', ['--version']).toString();
    const major = Number(/v=(\d+)\./.exec(version)?.[1] ?? 0);
    if (major < 7) return `redis-server ${/v=(\S+)/.exec(version)?.[1]} is older than 7 (the cluster tests use cluster-port)`;
    execFileSync('redis-cli', ['--version']);
    return undefined;
  } catch (err) {
    return `redis-server or redis-cli is not installed (${(err as Error).message.split('\n')[0]})`;
  }
}

/** Ports given: the node ports (their bus ports are free ones); otherwise six free ports. */
export async function startRedisCluster(
  options: { ports?: number[]; nodeTimeoutMs?: number; appendonly?: boolean } = {},
): Promise<RedisCluster> {
  const ports = options.ports ?? (await Promise.all(Array.from({ length: 6 }, () => freePort())));
  if (ports.length !== 6) throw new TypeError('a cluster of 3 primaries and 3 replicas needs 6 ports');
  const dir = mkdtempSync(path.join(tmpdir(), 'lampi-redis-cluster-'));
  const nodes: ClusterNode[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.proc.kill('SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) {
      const args = [
        '--cluster-enabled',
        'yes',
        '--cluster-port',
        String(await freePort()),
        '--cluster-config-file',
        `nodes-${port}.conf`,
        // A failed primary is noticed, and its replica elected, within a few seconds.
        '--cluster-node-timeout',
        String(options.nodeTimeoutMs ?? 1000),
      ];
      nodes.push({ port, proc: await startRedis({ port, dir, appendonly: options.appendonly ?? false, args }) });
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes']);
    await waitFor(
      'cluster_state:ok on every node, every replica in sync',
      async () => {
        for (const port of ports) {
          const info = await command(port, ['CLUSTER', 'INFO']);
          if (!String(info).includes('cluster_state:ok')) return false;
          const replication = String(await command(port, ['INFO', 'replication']));
          if (replication.includes('role:slave') && !replication.includes('master_link_status:up')) return false;
        }
        return true;
      },
      30_000,
      200,
    );
  } catch (err) {
    await stop();
    throw err;
  }

  const live = () => nodes.filter((node) => node.proc.child.exitCode === null && node.proc.child.signalCode === null);
  const slots = async () => {
    for (const node of live()) {
      try {
        return (await command(node.port, ['CLUSTER', 'SLOTS'])) as Array<[number, number, [string, number, string]]>;
      } catch {
        // that node is going down: ask the next
      }
    }
    throw new Error('no node of the cluster answers');
  };
  return {
    nodes,
    seeds: ports.map((p) => `127.0.0.1:${p}`).join(','),
    dir,
    async primaryFor(key) {
      const slot = Number(await command(live()[0]!.port, ['CLUSTER', 'KEYSLOT', key]));
      const range = (await slots()).find(([from, to]) => slot >= from && slot <= to);
      if (!range) throw new Error(`no node owns slot ${slot}`);
      return Number(range[2][1]);
    },
    async primaries() {
      return [...new Set((await slots()).map((range) => Number(range[2][1])))];
    },
    async kill(port) {
      const node = nodes.find((n) => n.port === port);
      if (!node) throw new Error(`no node on port ${port}`);
      await node.proc.kill('SIGKILL');
    },
    stop,
  };
}

/** One command on one node, on a connection of its own (not through the cluster client). */
export async function command(port: number, args: [string, ...string[]]): Promise<unknown> {
  const redis = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  try {
    await redis.connect();
    return await redis.call(...args);
  } finally {
    redis.disconnect();
  }
}

/** Waits until the cluster has a primary for every slot again (after a kill). */
export async function waitForClusterOk(cluster: RedisCluster, timeoutMs = 30_000): Promise<void> {
  await waitFor(
    'the cluster to be ok again',
    async () => {
      for (const node of cluster.nodes) {
        if (node.proc.child.exitCode !== null || node.proc.child.signalCode !== null) continue;
        if (!String(await command(node.port, ['CLUSTER', 'INFO'])).includes('cluster_state:ok')) return false;
      }
      return true;
    },
    timeoutMs,
    200,
  );
}
