/** `npm run devices` run as its own process, and what a fresh subscriber finds retained on a topic. */
import { spawn } from 'node:child_process';
import mqtt from 'mqtt';
import { ROOT } from './processes.js';

export interface DevicesRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runDevices(args: string[], env: Record<string, string>): Promise<DevicesRun> {
  return runTool('devices', args, env);
}

/** One of the operator's commands (`npm run devices` or `npm run dlq`) as its own process. */
export function runTool(tool: 'devices' | 'dlq', args: string[], env: Record<string, string>): Promise<DevicesRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `src/${tool}/main.ts`, ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The retained message a subscriber that connects now receives on `topic`, or undefined when none comes within `waitMs`. */
export async function retainedOn(brokerUrl: string, topic: string, waitMs = 1500): Promise<string | undefined> {
  const client = await mqtt.connectAsync(brokerUrl, { clean: true, reconnectPeriod: 0 });
  try {
    const received = new Promise<string>((resolve) =>
      client.on('message', (t, payload, packet) => t === topic && packet.retain && resolve(payload.toString())),
    );
    await client.subscribeAsync(topic, { qos: 1 });
    return await Promise.race([received, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), waitMs))]);
  } finally {
    await client.endAsync(true);
  }
}
