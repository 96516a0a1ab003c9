import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseFleetFile, type FleetFileParse } from '../../src/devices/fleet-file.js';

const CODE_A = '0123456789abcdef0123456789abcdef';
const CODE_B = 'fedcba9876543210fedcba9876543210';
const CODE_C = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa';

const errorsOf = (parsed: FleetFileParse) => (parsed.ok ? [] : parsed.errors);

describe('parseFleetFile: CSV', () => {
  it('reads rows by the header, in any column order, quoted fields included, with the line each starts on', () => {
    const csv = [
      'owner,device_id,name,code',
      `alice,b827eb000001,Kitchen,${CODE_A}`,
      '',
      `parked_device_user,b827eb000002,"Hall, upstairs ""big""",${CODE_B.toUpperCase()}`,
      `bob,2,,${CODE_C}`,
    ].join('\r\n');
    expect(parseFleetFile(csv)).toEqual({
      ok: true,
      rows: [
        { line: 2, deviceId: 'b827eb000001', owner: 'alice', code: CODE_A, name: 'Kitchen' },
        { line: 4, deviceId: 'b827eb000002', owner: 'parked_device_user', code: CODE_B, name: 'Hall, upstairs "big"' },
        // An empty name leaves the registry's default.
        { line: 5, deviceId: '2', owner: 'bob', code: CODE_C },
      ],
    });
  });

  it('takes a file without a name column, and counts lines inside a quoted field', () => {
    expect(parseFleetFile(`device_id,owner,code\nb827eb000001,alice,${CODE_A}\n`)).toEqual({
      ok: true,
      rows: [{ line: 2, deviceId: 'b827eb000001', owner: 'alice', code: CODE_A }],
    });
    const csv = `device_id,owner,code\n"b827eb000001","al\nice",${CODE_A}\nzz,bob,${CODE_B}\n`;
    expect(errorsOf(parseFleetFile(csv))).toEqual([
      { line: 2, reason: 'owner must be 1-150 characters, none of them control characters' },
      { line: 4, reason: 'device_id "zz" must be 1-12 lower-case hex characters' },
    ]);
  });

  it('names every bad row with its line and reason, and returns no rows at all', () => {
    const csv = [
      'device_id,owner,code,name',
      `B827EB000001,alice,${CODE_A},x`,
      `b827eb0000011,alice,${CODE_A},x`,
      `b827eb000003,,${CODE_A.slice(1)},x`,
      `b827eb000004,alice,${CODE_A},${'n'.repeat(51)}`,
      `b827eb000005,alice,${CODE_B}`,
      `b827eb000006,alice,${CODE_C},ok`,
      `b827eb000006,bob,${CODE_B.replace('f', '0')},ok`,
      `b827eb000007,${'u'.repeat(151)},${CODE_A},ok`,
    ].join('\n');
    const parsed = parseFleetFile(csv);
    expect(parsed.ok).toBe(false);
    expect(errorsOf(parsed)).toEqual([
      { line: 2, reason: 'device_id "B827EB000001" must be 1-12 lower-case hex characters' },
      { line: 3, reason: 'device_id "b827eb0000011" must be 1-12 lower-case hex characters' },
      { line: 4, reason: 'owner is missing; code must be 32 hex characters' },
      { line: 5, reason: 'name must be at most 50 characters, none of them control characters' },
      { line: 6, reason: '3 fields where the header has 4' },
      { line: 8, reason: 'device b827eb000006 is also on line 7' },
      { line: 9, reason: 'owner must be 1-150 characters, none of them control characters' },
    ]);
  });

  it('refuses a repeated device or code, naming the line it repeats', () => {
    const csv = ['device_id,owner,code', `a1,alice,${CODE_A}`, `a2,bob,${CODE_A}`, `a1,carol,${CODE_B}`].join('\n');
    expect(errorsOf(parseFleetFile(csv))).toEqual([
      { line: 3, reason: "its code is also on line 2 (every lamp's code is its own)" },
      { line: 4, reason: 'device a1 is also on line 2' },
    ]);
  });

  it('refuses a header that does not name the columns, on line 1', () => {
    expect(errorsOf(parseFleetFile(`device_id,user,code\na1,alice,${CODE_A}`))).toEqual([
      {
        line: 1,
        reason:
          'the header row must name the columns device_id, owner, code, name (name is optional): unknown column "user"; missing column owner',
      },
    ]);
    expect(errorsOf(parseFleetFile(`a1,alice,${CODE_A}`))[0]).toMatchObject({ line: 1 });
  });

  it('refuses an unclosed quote and text after a closing quote', () => {
    expect(errorsOf(parseFleetFile(`device_id,owner,code\na1,"alice,${CODE_A}\n`))).toEqual([
      { line: 2, reason: 'a quoted field is never closed' },
    ]);
    expect(errorsOf(parseFleetFile(`device_id,owner,code\na1,"ali"ce,${CODE_A}\n`))[0]).toMatchObject({ line: 2 });
  });

  it('refuses an empty file and a header without lamps', () => {
    expect(errorsOf(parseFleetFile(''))).toEqual([{ line: 0, reason: 'the file is empty' }]);
    expect(errorsOf(parseFleetFile('\uFEFF \n'))).toEqual([{ line: 0, reason: 'the file is empty' }]);
    expect(errorsOf(parseFleetFile('device_id,owner,code\n'))).toEqual([{ line: 0, reason: 'the file holds no lamps' }]);
  });
});

describe('parseFleetFile: JSON', () => {
  it('reads an array of lamps, each with the line its object starts on', () => {
    const json =
      `[\n  {"device_id": "b827eb000001", "owner": "alice", "code": "${CODE_A}", "name": "Desk"},\n\n  {\n ` +
      `   "device_id": "b827eb000002",\n    "owner": "parked_device_user",\n    "code": "${CODE_B}"\n  }\n]\n`;
    expect(parseFleetFile(json)).toEqual({
      ok: true,
      rows: [
        { line: 2, deviceId: 'b827eb000001', owner: 'alice', code: CODE_A, name: 'Desk' },
        { line: 4, deviceId: 'b827eb000002', owner: 'parked_device_user', code: CODE_B },
      ],
    });
  });

  it('names bad elements by line: wrong types, unknown fields, non-objects', () => {
    const json = [
      '[',
      `{"device_id": "a1", "owner": "alice", "code": "${CODE_A}", "note": "x, [y]"},`,
      `{"device_id": 17, "owner": "alice", "code": "${CODE_B}"},`,
      '"b827eb000003",',
      `{"device_id": "a4", "owner": "a\\"]lice", "code": "${CODE_C}", "__proto__": {}}`,
      ']',
    ].join('\n');
    expect(errorsOf(parseFleetFile(json))).toEqual([
      { line: 2, reason: 'unknown field "note" (the fields are device_id, owner, code, name)' },
      { line: 3, reason: 'device_id must be a string' },
      { line: 4, reason: 'each lamp must be an object with device_id, owner, code and name' },
      { line: 5, reason: 'unknown field "__proto__" (the fields are device_id, owner, code, name)' },
    ]);
  });

  it('says where JSON is broken, and that the top level must be an array', () => {
    const broken = parseFleetFile('[\n{"device_id": "a1",\n "owner": }\n]');
    expect(errorsOf(broken)).toHaveLength(1);
    // The broken lamp's object starts on line 2.
    expect(errorsOf(broken)[0]!.line).toBe(2);
    expect(errorsOf(broken)[0]!.reason).toMatch(/^not valid JSON \(in the lamp that starts on this line\): /);
    expect(errorsOf(parseFleetFile(`{"device_id": "a1", "owner": "alice", "code": "${CODE_A}"}`))[0]!.reason).toMatch(
      /must be an array of lamps/,
    );
    expect(errorsOf(parseFleetFile('[]'))).toEqual([{ line: 0, reason: 'the file holds no lamps' }]);
  });
});

describe('parseFleetFile never throws', () => {
  it('answers rows or errors for any text, and every error names a line within the file', () => {
    const fragments = fc.constantFrom(
      'device_id,owner,code,name\n',
      '[',
      ']',
      '{',
      '}',
      '"',
      '""',
      ',',
      '\n',
      '\r\n',
      ':',
      'a1',
      'alice',
      CODE_A,
      '"device_id"',
      '"owner"',
      '"code"',
      '\\',
      '\uFEFF',
      'null',
      '1e999',
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 200 }),
          fc.array(fragments, { maxLength: 40 }).map((parts) => parts.join('')),
        ),
        (text) => {
          const parsed = parseFleetFile(text);
          const lines = text.split('\n').length;
          if (parsed.ok) expect(parsed.rows.length).toBeGreaterThan(0);
          else for (const error of parsed.errors) expect(error.line).toBeLessThanOrEqual(lines);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
