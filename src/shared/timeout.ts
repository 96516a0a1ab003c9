/**
 * Bounding a wait: `withTimeout` settles as `promise` does, or rejects with a TimeoutError after
 * `ms`. The promise itself is not cancelled; the caller closes whatever it was waiting on.
 */
import { TimeoutError } from './errors.js';

export async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
