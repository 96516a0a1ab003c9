import { describe, expect, it } from 'vitest';
import { parkedUserRow, unusablePassword } from '../../src/worker/registry/django-user.js';

describe('unusablePassword', () => {
  it("is Django's form: `!` and 40 characters of Django's RANDOM_STRING_CHARS", () => {
    for (let i = 0; i < 200; i++) expect(unusablePassword()).toMatch(/^![a-zA-Z0-9]{40}$/);
  });

  it('draws every character from the randomness it is given, over the whole alphabet', () => {
    expect(unusablePassword(() => 0)).toBe(`!${'a'.repeat(40)}`);
    expect(unusablePassword((max) => max - 1)).toBe(`!${'9'.repeat(40)}`);
    let i = 0;
    expect(unusablePassword((max) => i++ % max)).toBe('!abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN');
  });

  it('differs from call to call', () => {
    expect(new Set(Array.from({ length: 100 }, () => unusablePassword())).size).toBe(100);
  });
});

describe('parkedUserRow', () => {
  it('is inactive, no staff, no superuser, never logged in, with empty names and email, joined now', () => {
    const now = new Date('2026-12-02T19:00:00.000Z');
    expect(parkedUserRow('parked_device_user', now, () => 1)).toEqual({
      username: 'parked_device_user',
      password: `!${'b'.repeat(40)}`,
      lastLogin: null,
      isSuperuser: false,
      firstName: '',
      lastName: '',
      email: '',
      isStaff: false,
      isActive: false,
      dateJoined: now,
    });
  });
});
