import { randomBytes } from 'node:crypto';

/** A random lamp id (12 hex, like a MAC address), so tests never meet each other's devices. */
export function randomDeviceId(): string {
  return randomBytes(6).toString('hex');
}

/** A BullMQ key prefix of a test's own, so its queues start empty and stay apart. */
export function randomPrefix(label = 't'): string {
  return `lampi-test-${label}-${randomBytes(3).toString('hex')}`;
}
