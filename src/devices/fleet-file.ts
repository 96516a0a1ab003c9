/**
 * Reads a fleet file (the lamps an operator brings from the LAMPI site or the old daemon) into
 * rows, or into every bad row's line and reason. Pure, and never throws: whatever the text, the
 * answer is one of the two.
 *
 * CSV: a header row naming the columns `device_id`, `owner`, `code` and optionally `name`, in any
 * order; fields may be quoted ("a, b" and "say ""hi"""). JSON: an array of objects with those keys.
 */
import { isDeviceId } from '../shared/topics.js';

export const FLEET_COLUMNS = ['device_id', 'owner', 'code', 'name'] as const;
const REQUIRED_COLUMNS = ['device_id', 'owner', 'code'] as const;

/** As the LAMPI site's model (and our `devices` table) bound them. */
const OWNER_MAX_CHARS = 150;
const NAME_MAX_CHARS = 50;
const ASSOCIATION_CODE = /^[0-9a-f]{32}$/i;

export function isAssociationCode(value: string): boolean {
  return ASSOCIATION_CODE.test(value);
}

/** A username as the LAMPI site allows it: 1-150 characters, no control characters. */
export function isOwnerName(value: string): boolean {
  return value !== '' && [...value].length <= OWNER_MAX_CHARS && !/\p{Cc}/u.test(value);
}

export interface FleetRow {
  /** Where the row starts in the file (1-based), for messages about it. */
  line: number;
  deviceId: string;
  owner: string;
  /** Lower-cased, as the registry keeps codes. */
  code: string;
  /** Absent when the file leaves it out or empty: the registry's default name applies. */
  name?: string;
}

export interface RowError {
  /** 1-based; 0 when the file as a whole is at fault (empty, say). */
  line: number;
  reason: string;
}

export type FleetFileParse = { ok: true; rows: FleetRow[] } | { ok: false; errors: RowError[] };

type RawRow = { line: number; fields: Record<string, unknown> };
/** Rows read so far and errors met; an error that spoils the whole file leaves no rows. */
type RawParse = { rows: RawRow[]; errors: RowError[] };

/** JSON when the text opens with `[` or `{`, CSV otherwise. */
export function parseFleetFile(text: string): FleetFileParse {
  const body = text.replace(/^\uFEFF/, '');
  if (body.trim() === '') return { ok: false, errors: [{ line: 0, reason: 'the file is empty' }] };
  return validate(/^\s*[[{]/.test(body) ? jsonRows(body) : csvRows(body));
}

function validate(raw: RawParse): FleetFileParse {
  const errors = [...raw.errors];
  const rows: FleetRow[] = [];
  const lineOfDevice = new Map<string, number>();
  const lineOfCode = new Map<string, number>();
  for (const { line, fields } of raw.rows) {
    const problems: string[] = [];
    const wrongType: string[] = [];
    const text = (key: string) => {
      const value = fields[key];
      if (value === undefined || value === null) return '';
      if (typeof value === 'string') return value.trim();
      wrongType.push(key);
      return '';
    };
    const deviceId = text('device_id');
    const owner = text('owner');
    const code = text('code').toLowerCase();
    const name = text('name');
    const check = (key: string, value: string, problem: string | undefined) => {
      if (wrongType.includes(key)) problems.push(`${key} must be a string`);
      else if (problem) problems.push(value === '' && key !== 'name' ? `${key} is missing` : problem);
    };
    check('device_id', deviceId, isDeviceId(deviceId) ? undefined : `device_id ${quote(deviceId)} must be 1-12 lower-case hex characters`);
    check(
      'owner',
      owner,
      isOwnerName(owner) ? undefined : `owner must be 1-${OWNER_MAX_CHARS} characters, none of them control characters`,
    );
    check('code', code, isAssociationCode(code) ? undefined : 'code must be 32 hex characters');
    check(
      'name',
      name,
      [...name].length <= NAME_MAX_CHARS && !/\p{Cc}/u.test(name)
        ? undefined
        : `name must be at most ${NAME_MAX_CHARS} characters, none of them control characters`,
    );
    if (problems.length === 0) {
      const sameDevice = lineOfDevice.get(deviceId);
      const sameCode = lineOfCode.get(code);
      if (sameDevice !== undefined) problems.push(`device ${deviceId} is also on line ${sameDevice}`);
      if (sameCode !== undefined) problems.push(`its code is also on line ${sameCode} (every lamp's code is its own)`);
      if (sameDevice === undefined) lineOfDevice.set(deviceId, line);
      if (sameCode === undefined) lineOfCode.set(code, line);
    }
    if (problems.length > 0) errors.push({ line, reason: problems.join('; ') });
    else rows.push({ line, deviceId, owner, code, ...(name === '' ? {} : { name }) });
  }
  if (errors.length > 0) return { ok: false, errors: errors.sort((a, b) => a.line - b.line) };
  if (rows.length === 0) return { ok: false, errors: [{ line: 0, reason: 'the file holds no lamps' }] };
  return { ok: true, rows };
}

const quote = (value: string) => JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);

function jsonRows(text: string): RawParse {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    return {
      rows: [],
      errors: [
        {
          line: brokenLine(text),
          reason: `not valid JSON (in the lamp that starts on this line): ${(err as Error).message.replace(/\s+/g, ' ')}`,
        },
      ],
    };
  }
  if (!Array.isArray(parsed))
    return {
      rows: [],
      errors: [{ line: 1, reason: 'a JSON fleet file must be an array of lamps: [{"device_id": …, "owner": …, "code": …, "name": …}, …]' }],
    };
  const spans = elementSpans(text);
  const rows: RawRow[] = [];
  const errors: RowError[] = [];
  parsed.forEach((element: unknown, i) => {
    const line = spans[i]?.line ?? 0;
    if (typeof element !== 'object' || element === null || Array.isArray(element)) {
      errors.push({ line, reason: 'each lamp must be an object with device_id, owner, code and name' });
      return;
    }
    const unknown = Object.keys(element).filter((key) => !(FLEET_COLUMNS as readonly string[]).includes(key));
    if (unknown.length > 0) {
      errors.push({
        line,
        reason: `unknown field ${unknown.map((key) => quote(key)).join(', ')} (the fields are ${FLEET_COLUMNS.join(', ')})`,
      });
      return;
    }
    rows.push({ line, fields: element as Record<string, unknown> });
  });
  return { rows, errors };
}

/** Where broken JSON breaks: the first array element that does not parse on its own, else line 1. */
function brokenLine(text: string): number {
  for (const span of elementSpans(text)) {
    try {
      JSON.parse(text.slice(span.start, span.end));
    } catch {
      return span.line;
    }
  }
  return 1;
}

/** Each element of a top-level JSON array: the line it starts on and its text's offsets. */
function elementSpans(text: string): Array<{ line: number; start: number; end: number }> {
  const spans: Array<{ line: number; start: number; end: number }> = [];
  let line = 1;
  let depth = 0;
  let inString = false;
  let expectElement = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\n') line++;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (/\s/.test(c)) continue;
    if (expectElement && c !== ']') {
      spans.push({ line, start: i, end: text.length });
      expectElement = false;
    }
    const closesElement = depth === 1 && (c === ',' || c === ']');
    if (closesElement && spans.length > 0) spans[spans.length - 1]!.end = Math.min(spans[spans.length - 1]!.end, i);
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      depth++;
      if (depth === 1 && c === '[') expectElement = true;
    } else if (c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 1) expectElement = true;
  }
  return spans;
}

function csvRows(text: string): RawParse {
  const records = csvRecords(text);
  if (!records.ok) return { rows: [], errors: records.errors };
  const [header, ...data] = records.records;
  const columns = header!.fields.map((name) => name.trim().toLowerCase());
  const headerProblems: string[] = [];
  const unknown = columns.filter((name) => !(FLEET_COLUMNS as readonly string[]).includes(name));
  if (unknown.length > 0) headerProblems.push(`unknown column ${unknown.map((name) => quote(name)).join(', ')}`);
  const repeated = columns.filter((name, i) => columns.indexOf(name) !== i);
  if (repeated.length > 0) headerProblems.push(`column ${quote(repeated[0]!)} appears twice`);
  const missing = REQUIRED_COLUMNS.filter((name) => !columns.includes(name));
  if (missing.length > 0) headerProblems.push(`missing column ${missing.join(', ')}`);
  if (headerProblems.length > 0) {
    return {
      rows: [],
      errors: [
        {
          line: header!.line,
          reason: `the header row must name the columns ${FLEET_COLUMNS.join(', ')} (name is optional): ${headerProblems.join('; ')}`,
        },
      ],
    };
  }
  const rows: RawRow[] = [];
  const errors: RowError[] = [];
  for (const { line, fields } of data) {
    if (fields.length !== columns.length) errors.push({ line, reason: `${fields.length} fields where the header has ${columns.length}` });
    else rows.push({ line, fields: Object.fromEntries(columns.map((name, i) => [name, fields[i]])) });
  }
  return { rows, errors };
}

type CsvRecords = { ok: true; records: Array<{ line: number; fields: string[] }> } | { ok: false; errors: RowError[] };

/** RFC 4180 records, blank lines skipped, each with the line it starts on. */
function csvRecords(text: string): CsvRecords {
  const records: Array<{ line: number; fields: string[] }> = [];
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const start = line;
    const fields: string[] = [];
    for (;;) {
      let field = '';
      if (text[i] === '"') {
        i++;
        for (;;) {
          if (i >= text.length) return { ok: false, errors: [{ line: start, reason: 'a quoted field is never closed' }] };
          const c = text[i]!;
          if (c === '"' && text[i + 1] === '"') {
            field += '"';
            i += 2;
          } else if (c === '"') {
            i++;
            break;
          } else {
            if (c === '\n') line++;
            field += c;
            i++;
          }
        }
        if (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          return {
            ok: false,
            errors: [{ line, reason: 'text after a closing quote: a quote inside a quoted field must be doubled ("")' }],
          };
        }
      } else {
        while (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') field += text[i++];
      }
      fields.push(field);
      if (text[i] === ',') {
        i++;
        continue;
      }
      if (text[i] === '\r') i++;
      if (text[i] === '\n') i++;
      line++;
      break;
    }
    if (!(fields.length === 1 && fields[0]!.trim() === '')) records.push({ line: start, fields });
  }
  if (records.length === 0) return { ok: false, errors: [{ line: 0, reason: 'the file is empty' }] };
  return { ok: true, records };
}
