/**
 * HTTP basic auth for the dashboard, and the rule for when it may be left off.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

export interface Credentials {
  username: string;
  password: string;
}

export const REALM = 'Basic realm="LAMPI dashboard", charset="UTF-8"';

/** 127.0.0.0/8, ::1 (and IPv4-mapped loopback) and `localhost`: only this machine can connect. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost') return true;
  if (isIP(bare) === 4) return bare.startsWith('127.');
  if (isIP(bare) === 6) return bare === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(bare) || /^::ffff:127\./.test(bare);
  return false;
}

const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/**
 * Checks an `Authorization` header against the credentials. Both fields are compared as
 * SHA-256 digests (equal length whatever was sent) with timingSafeEqual, and both always are,
 * so the time taken says nothing about which part was wrong or how much of it was right.
 */
export function createBasicAuthCheck(credentials: Credentials): (header: string | undefined) => boolean {
  const expectedUser = digest(credentials.username);
  const expectedPassword = digest(credentials.password);
  return (header) => {
    const match = /^Basic +([A-Za-z0-9+/=]+) *$/i.exec(header ?? '');
    const decoded = match ? Buffer.from(match[1]!, 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    const user = colon >= 0 ? decoded.slice(0, colon) : '';
    const password = colon >= 0 ? decoded.slice(colon + 1) : '';
    const userOk = timingSafeEqual(digest(user), expectedUser);
    const passwordOk = timingSafeEqual(digest(password), expectedPassword);
    return match !== null && colon >= 0 && userOk && passwordOk;
  };
}
