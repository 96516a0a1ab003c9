/**
 * The `npm run devices` command line, read into one command or a reason it is wrong. Pure, and
 * never throws: every argument is checked before PostgreSQL or the broker is reached.
 */
import { isDeviceId } from '../shared/topics.js';
import { isAssociationCode, isOwnerName } from './fleet-file.js';

export const USAGE =
  'usage: npm run devices -- list [--json] | show <device id> [--json] | claim <association code> ' +
  '<username> | delete <device id> | import <file.csv or file.json>';

export type DevicesCommand =
  | { name: 'help' }
  | { name: 'list'; json: boolean }
  | { name: 'show'; deviceId: string; json: boolean }
  | { name: 'claim'; code: string; username: string }
  | { name: 'delete'; deviceId: string }
  | { name: 'import'; file: string };

export type ParsedCommand = { ok: true; command: DevicesCommand } | { ok: false; error: string };

export function parseCommand(argv: readonly string[]): ParsedCommand {
  const [name, ...rest] = argv;
  const json = rest.includes('--json');
  const options = rest.filter((arg) => arg.startsWith('-'));
  const args = rest.filter((arg) => !arg.startsWith('-'));
  const fail = (error: string): ParsedCommand => ({ ok: false, error });
  const takes = (count: number, what: string, allowJson = false): string | undefined => {
    const unknown = options.filter((option) => !(allowJson && option === '--json'));
    if (unknown.length > 0) return `unknown option ${unknown[0]} for ${name}`;
    if (args.length !== count) return `${name} takes ${what}`;
    return undefined;
  };
  const deviceId = (text: string) => {
    const id = text.toLowerCase();
    return isDeviceId(id) ? id : undefined;
  };

  if (name === undefined) return fail('no command given');
  if (name === '-h' || name === '--help' || name === 'help') return { ok: true, command: { name: 'help' } };
  if (name === 'list') {
    const problem = takes(0, 'no arguments (but --json)', true);
    return problem ? fail(problem) : { ok: true, command: { name, json } };
  }
  if (name === 'show' || name === 'delete') {
    const problem = takes(1, 'one device id', name === 'show');
    if (problem) return fail(problem);
    const id = deviceId(args[0]!);
    if (!id) return fail(`not a device id: ${JSON.stringify(args[0])} (1-12 hex characters)`);
    return { ok: true, command: name === 'show' ? { name, deviceId: id, json } : { name, deviceId: id } };
  }
  if (name === 'claim') {
    const problem = takes(2, 'an association code and a username');
    if (problem) return fail(problem);
    const code = args[0]!.toLowerCase();
    if (!isAssociationCode(code)) return fail(`not an association code: ${JSON.stringify(args[0])} (32 hex characters)`);
    if (!isOwnerName(args[1]!)) return fail('a username is 1-150 characters, none of them control characters');
    return { ok: true, command: { name, code, username: args[1]! } };
  }
  if (name === 'import') {
    const problem = takes(1, 'one file (CSV or JSON)');
    return problem ? fail(problem) : { ok: true, command: { name, file: args[0]! } };
  }
  return fail(`unknown command ${JSON.stringify(name)}`);
}
