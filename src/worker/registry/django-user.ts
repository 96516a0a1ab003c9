/**
 * The parked user as Django itself would create it (`User.objects.create_user(name)` followed by
 * `set_unusable_password()` and `is_active = False`), so the LAMPI site and its admin treat it
 * like any account of theirs and nobody can ever log in as it. Pure: the caller gives the clock
 * and the randomness.
 */
import { randomInt } from 'node:crypto';

/** Django's UNUSABLE_PASSWORD_PREFIX and UNUSABLE_PASSWORD_SUFFIX_LENGTH. */
const UNUSABLE_PASSWORD_PREFIX = '!';
const UNUSABLE_PASSWORD_SUFFIX_LENGTH = 40;
/** Django's RANDOM_STRING_CHARS (django.utils.crypto.get_random_string). */
const RANDOM_STRING_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

/** `!` and 40 random characters: Django's `make_password(None)`. */
export function unusablePassword(random: (max: number) => number = randomInt): string {
  let suffix = '';
  for (let i = 0; i < UNUSABLE_PASSWORD_SUFFIX_LENGTH; i++) suffix += RANDOM_STRING_CHARS[random(RANDOM_STRING_CHARS.length)];
  return UNUSABLE_PASSWORD_PREFIX + suffix;
}

export interface DjangoUserRow {
  username: string;
  password: string;
  lastLogin: null;
  isSuperuser: false;
  firstName: '';
  lastName: '';
  email: '';
  isStaff: false;
  isActive: false;
  dateJoined: Date;
}

/** The auth_user row of the owner of lamps nobody has claimed. */
export function parkedUserRow(username: string, now: Date, random?: (max: number) => number): DjangoUserRow {
  return {
    username,
    password: unusablePassword(random),
    lastLogin: null,
    isSuperuser: false,
    firstName: '',
    lastName: '',
    email: '',
    isStaff: false,
    isActive: false,
    dateJoined: now,
  };
}
