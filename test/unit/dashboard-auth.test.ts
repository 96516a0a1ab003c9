import { describe, expect, it } from 'vitest';
import { createBasicAuthCheck, isLoopback } from '../../src/dashboard/auth.js';

const basic = (text: string) => `Basic ${Buffer.from(text).toString('base64')}`;

describe('dashboard basic auth', () => {
  const check = createBasicAuthCheck({ username: 'op', password: 'p:ss wörd' });

  it('accepts the credentials, with a colon and non-ASCII in the password', () => {
    expect(check(basic('op:p:ss wörd'))).toBe(true);
    expect(check(`basic   ${Buffer.from('op:p:ss wörd').toString('base64')}`)).toBe(true);
  });

  it('refuses anything else', () => {
    for (const header of [
      undefined,
      '',
      'Basic',
      basic('op:'),
      basic('op:p:ss word'),
      basic('OP:p:ss wörd'),
      basic('op p:ss wörd'),
      basic(':op:p:ss wörd'),
      `Bearer ${Buffer.from('op:p:ss wörd').toString('base64')}`,
    ]) {
      expect(check(header), String(header)).toBe(false);
    }
  });
});

describe('isLoopback', () => {
  it('knows loopback addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', 'LOCALHOST', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1'])
      expect(isLoopback(host), host).toBe(true);
    for (const host of [
      '0.0.0.0',
      '::',
      '192.168.1.10',
      '10.0.0.1',
      'example.com',
      '128.0.0.1',
      '::ffff:10.0.0.1',
      'localhost.example.com',
    ])
      expect(isLoopback(host), host).toBe(false);
  });
});
