import { describe, expect, it } from 'vitest';
import { parseCommand } from '../../src/devices/command.js';

const CODE = '0123456789abcdef0123456789abcdef';

describe('parseCommand', () => {
  it('reads each command, lower-casing device ids and codes', () => {
    expect(parseCommand(['list'])).toEqual({ ok: true, command: { name: 'list', json: false } });
    expect(parseCommand(['list', '--json'])).toEqual({ ok: true, command: { name: 'list', json: true } });
    expect(parseCommand(['show', 'B827EB0A1B2C', '--json'])).toEqual({
      ok: true,
      command: { name: 'show', deviceId: 'b827eb0a1b2c', json: true },
    });
    expect(parseCommand(['delete', 'b827eb0a1b2c'])).toEqual({ ok: true, command: { name: 'delete', deviceId: 'b827eb0a1b2c' } });
    expect(parseCommand(['claim', CODE.toUpperCase(), 'Alice'])).toEqual({
      ok: true,
      command: { name: 'claim', code: CODE, username: 'Alice' },
    });
    expect(parseCommand(['import', 'fleet.csv'])).toEqual({ ok: true, command: { name: 'import', file: 'fleet.csv' } });
    expect(parseCommand(['--help'])).toEqual({ ok: true, command: { name: 'help' } });
  });

  it('says what is wrong with bad arguments', () => {
    const errorOf = (argv: string[]) => {
      const parsed = parseCommand(argv);
      return parsed.ok ? undefined : parsed.error;
    };
    expect(errorOf([])).toBe('no command given');
    expect(errorOf(['lsit'])).toBe('unknown command "lsit"');
    expect(errorOf(['list', 'x'])).toBe('list takes no arguments (but --json)');
    expect(errorOf(['delete', 'b827eb0a1b2c', '--json'])).toBe('unknown option --json for delete');
    expect(errorOf(['show'])).toBe('show takes one device id');
    expect(errorOf(['show', 'b827eb0a1b2c0'])).toBe('not a device id: "b827eb0a1b2c0" (1-12 hex characters)');
    expect(errorOf(['claim', CODE])).toBe('claim takes an association code and a username');
    expect(errorOf(['claim', CODE.slice(1), 'alice'])).toMatch(/^not an association code: /);
    expect(errorOf(['claim', CODE, 'a\u0007'])).toBe('a username is 1-150 characters, none of them control characters');
    expect(errorOf(['claim', CODE, 'u'.repeat(151)])).toBe('a username is 1-150 characters, none of them control characters');
    expect(errorOf(['import'])).toBe('import takes one file (CSV or JSON)');
  });
});
