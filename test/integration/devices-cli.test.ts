/**
 * `npm run devices`, run as its own process against a real PostgreSQL and Mosquitto: the rows it
 * writes, the retained association message a fresh subscriber receives after a claim, exit codes,
 * an import that is all or nothing and harmless to repeat, and no secret in what it prints.
 */
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { retainedOn, runDevices } from '../support/devices.js';
import { randomDeviceId } from '../support/ids.js';

const services = inject('services');
const code = () => [randomDeviceId(), randomDeviceId(), randomDeviceId()].join('').slice(0, 32);
const USAGE = /^usage: npm run devices -- list/m;

describe('npm run devices', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  let env: Record<string, string>;
  const dir = mkdtempSync(path.join(tmpdir(), 'lampi-devices-'));
  const topics: string[] = [];
  const file = (name: string, text: string) => {
    const where = path.join(dir, name);
    writeFileSync(where, text);
    return where;
  };
  const lamps = { alice: randomDeviceId(), parked: randomDeviceId(), bob: randomDeviceId() };
  const codes = { alice: code(), parked: code(), bob: code() };
  const rows = async () =>
    (
      await pool.query<{
        device_id: string;
        name: string;
        association_code: string;
        username: string;
        is_active: boolean;
        created_by_message_id: string;
        created_at: Date;
      }>(
        'SELECT d.device_id, d.name, d.association_code, u.username, u.is_active, d.created_by_message_id, ' +
          'd.created_at FROM devices d JOIN users u ON u.id = d.user_id ORDER BY d.device_id',
      )
    ).rows;

  beforeAll(async () => {
    db = await createTestDatabase(services.postgres);
    pool = new pg.Pool({ connectionString: db.url, max: 1 });
    env = { DATABASE_URL: db.url, MQTT_URL: services.mqtt };
  });
  afterAll(async () => {
    const client = await mqtt.connectAsync(services.mqtt);
    for (const topic of topics) await client.publishAsync(topic, '', { qos: 1, retain: true });
    await client.endAsync();
    await pool?.end();
    await db?.drop();
  });

  it('imports a CSV fleet: owners created as needed, the parked user inactive, each lamp with its code; again, it changes nothing', async () => {
    const csv = file(
      'fleet.csv',
      [
        'device_id,owner,code,name',
        `${lamps.alice},alice,${codes.alice},Kitchen`,
        `${lamps.parked},parked_device_user,${codes.parked},`,
        `${lamps.bob},bob,${codes.bob.toUpperCase()},"Hall, upstairs"`,
      ].join('\n'),
    );
    const first = await runDevices(['import', csv], env);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`imported ${csv}: 3 lamps: 3 added (2 claimed, 1 parked), 3 users created; 0 already registered`);
    const imported = await rows();
    expect(imported.map(({ created_at: _, ...row }) => row)).toEqual(
      [
        {
          device_id: lamps.alice,
          name: 'Kitchen',
          association_code: codes.alice,
          username: 'alice',
          is_active: true,
          created_by_message_id: 'import',
        },
        {
          device_id: lamps.parked,
          name: 'My LAMPI',
          association_code: codes.parked,
          username: 'parked_device_user',
          is_active: false,
          created_by_message_id: 'import',
        },
        {
          device_id: lamps.bob,
          name: 'Hall, upstairs',
          association_code: codes.bob,
          username: 'bob',
          is_active: true,
          created_by_message_id: 'import',
        },
      ].sort((a, b) => a.device_id.localeCompare(b.device_id)),
    );

    const again = await runDevices(['import', csv], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('0 added (0 claimed, 0 parked), 0 users created; 3 already registered, kept as registered');
    expect(await rows()).toEqual(imported);
    expect(Number((await pool.query('SELECT count(*) AS n FROM users')).rows[0].n)).toBe(3);
  });

  it('imports nothing from a file with a bad row, naming each bad row by line and reason', async () => {
    const before = await rows();
    const fresh = randomDeviceId();
    const csv = file(
      'bad.csv',
      [
        'device_id,owner,code,name',
        `${fresh},carol,${code()},ok`,
        `${randomDeviceId().toUpperCase()},carol,${code()},x`,
        `${randomDeviceId()},carol,${code().slice(2)},x`,
      ].join('\n'),
    );
    const run = await runDevices(['import', csv], env);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`${csv} line 3: device_id`);
    expect(run.stderr).toContain('must be 1-12 lower-case hex characters');
    expect(run.stderr).toContain(`${csv} line 4: code must be 32 hex characters`);
    expect(run.stderr).toContain(`nothing imported from ${csv}: fix these 2 rows`);
    expect(await rows()).toEqual(before);

    // A code that another lamp in the registry already has: found in the database, the same all-or-nothing.
    const clash = file(
      'clash.json',
      JSON.stringify(
        [
          { device_id: fresh, owner: 'carol', code: code() },
          { device_id: randomDeviceId(), owner: 'carol', code: codes.bob },
        ],
        null,
        1,
      ),
    );
    const clashed = await runDevices(['import', clash], env);
    expect(clashed.code).toBe(1);
    expect(clashed.stderr).toContain(`${clash} line 7: its code already belongs to lamp ${lamps.bob} in the registry`);
    expect(await rows()).toEqual(before);
    expect((await pool.query("SELECT 1 FROM users WHERE username = 'carol'")).rowCount).toBe(0);
  });

  it('keeps a lamp it already has as registered, and says where the file differs', async () => {
    const before = await rows();
    const added = randomDeviceId();
    const json = file(
      'more.json',
      JSON.stringify(
        [
          { device_id: lamps.alice, owner: 'mallory', code: codes.alice, name: 'Kitchen' },
          { device_id: added, owner: 'dave', code: code() },
        ],
        null,
        2,
      ),
    );
    const run = await runDevices(['import', json], env);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(
      `${json} line 2: lamp ${lamps.alice} is already registered, kept as registered (owner alice, the file says mallory)`,
    );
    expect(run.stdout).toContain(
      '1 added (1 claimed, 0 parked), 1 user created; 1 already registered, kept as registered (1 of them differ from the file, above)',
    );
    const after = await rows();
    expect(after.find((row) => row.device_id === lamps.alice)).toEqual(before.find((row) => row.device_id === lamps.alice));
    expect(after.find((row) => row.device_id === added)).toMatchObject({ username: 'dave', is_active: true, name: 'My LAMPI' });
  });

  it('lists every lamp as a table and as JSON, and shows one lamp with every field', async () => {
    const table = await runDevices(['list'], env);
    expect(table.code).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^DEVICE_ID\s+OWNER\s+BRIDGE\s+ASSOCIATION_CODE\s+CREATED_AT\s+NAME$/);
    expect(lines.find((line) => line.startsWith(lamps.parked))).toMatch(
      new RegExp(`^${lamps.parked}\\s+parked_device_user \\(parked\\)\\s+-\\s+${codes.parked}\\s+\\S+\\s+My LAMPI$`),
    );
    expect(lines.at(-1)).toBe('4 lamps: 3 claimed, 1 parked');

    const json = await runDevices(['list', '--json'], env);
    const listed = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
    expect(listed).toHaveLength(4);
    expect(listed.find((lamp) => lamp.device_id === lamps.bob)).toEqual({
      device_id: lamps.bob,
      name: 'Hall, upstairs',
      owner: 'bob',
      owner_active: true,
      parked: false,
      association_code: codes.bob,
      association_topic: `/devices/${lamps.bob}/lamp/associated`,
      created_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      created_by: 'import',
      bridge_connected: null,
      bridge_state_at: null,
      bridge_state_message_id: null,
    });

    await pool.query(
      "UPDATE devices SET bridge_connected = true, bridge_state_at = '2026-12-01T10:00:00Z', bridge_state_message_id = 'm1' WHERE device_id = $1",
      [lamps.parked],
    );
    const shown = await runDevices(['show', lamps.parked.toUpperCase()], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain(`association_code      ${codes.parked}`);
    expect(shown.stdout).toMatch(/owner\s+parked_device_user \(parked: nobody has claimed it\), inactive/);
    expect(shown.stdout).toMatch(/bridge\s+connected since 2026-12-01T10:00:00.000Z/);
    expect(shown.stdout).toMatch(/created_by\s+import/);
    expect(JSON.parse((await runDevices(['show', lamps.parked, '--json'], env)).stdout)).toMatchObject({
      bridge_connected: true,
      bridge_state_message_id: 'm1',
      parked: true,
    });
  });

  it('claims a parked lamp by its code for a new user, and the lamp finds {"associated": true} retained on its topic', async () => {
    const topic = `/devices/${lamps.parked}/lamp/associated`;
    topics.push(topic);
    const run = await runDevices(['claim', codes.parked.toUpperCase(), 'erin'], env);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(
      `claimed: lamp ${lamps.parked} is now erin's (it was parked_device_user's); user erin was created (active)`,
    );
    expect((await rows()).find((row) => row.device_id === lamps.parked)).toMatchObject({
      username: 'erin',
      is_active: true,
      association_code: codes.parked,
    });
    expect(await retainedOn(services.mqtt, topic)).toBe('{"associated":true}');
  });

  it("publishes on ASSOCIATION_TOPIC, and a claim for the lamp's own owner only tells the lamp again", async () => {
    const topic = `devices/${lamps.alice}/lamp/associated`;
    topics.push(topic);
    const before = await rows();
    const run = await runDevices(['claim', codes.alice, 'alice'], { ...env, ASSOCIATION_TOPIC: 'devices/{device_id}/lamp/associated' });
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`lamp ${lamps.alice} was already alice's`);
    expect(await retainedOn(services.mqtt, topic)).toBe('{"associated":true}');
    expect(await rows()).toEqual(before);
  });

  it('exits 2 for a code, lamp or file nobody has, and 1 with the usage line for bad arguments, changing nothing', async () => {
    const before = await rows();
    const cases: Array<[string[], number, RegExp]> = [
      [['claim', code(), 'erin'], 2, /^devices: no lamp has the association code [0-9a-f]{32}$/m],
      [['show', 'abc123'], 2, /^devices: no lamp abc123 in the registry$/m],
      [['delete', 'abc123'], 2, /^devices: no lamp abc123 in the registry$/m],
      [['import', path.join(dir, 'missing.csv')], 2, /^devices: no file .*missing\.csv$/m],
      [[], 1, USAGE],
      [['list', 'extra'], 1, USAGE],
      [['show', 'not-hex'], 1, USAGE],
      [['claim', 'abc', 'erin'], 1, USAGE],
      [['claim', codes.bob, 'parked_device_user'], 1, /DEFAULT_USER, the owner of parked lamps/],
      [['frobnicate'], 1, USAGE],
    ];
    for (const [args, exit, message] of cases) {
      const run = await runDevices(args, env);
      expect(run.code, args.join(' ')).toBe(exit);
      expect(run.stderr, args.join(' ')).toMatch(message);
    }
    expect(await rows()).toEqual(before);
  });

  it('claims nothing when the broker cannot be reached, and prints no password', async () => {
    const before = await rows();
    const withSecrets = {
      DATABASE_URL: db.url.replace('postgresql://postgres@', 'postgresql://postgres:db-s3cret@'),
      MQTT_URL: 'mqtt://127.0.0.1:1',
      MQTT_USERNAME: 'ingest',
      MQTT_PASSWORD: 'mqtt-s3cret',
    };
    const run = await runDevices(['claim', codes.bob, 'frank'], withSecrets);
    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toBe(
      'devices: cannot reach the MQTT broker at MQTT_URL=mqtt://127.0.0.1:1 (ECONNREFUSED): start it or fix MQTT_URL',
    );
    expect(await rows()).toEqual(before);

    const outputs = [
      run,
      await runDevices(['list', '--json'], withSecrets),
      await runDevices(['show', lamps.bob], withSecrets),
      await runDevices(['list'], { ...withSecrets, DATABASE_URL: 'postgresql://postgres:db-s3cret@127.0.0.1:1/x' }),
    ];
    expect(outputs[3]!.stderr.trim()).toMatch(
      /^devices: cannot reach PostgreSQL at DATABASE_URL=postgresql:\/\/postgres:\*\*\*@127.0.0.1:1\/x \(.+\): start PostgreSQL or fix DATABASE_URL$/,
    );
    for (const output of outputs) {
      expect(output.stdout + output.stderr).not.toContain('s3cret');
    }
  });

  it('deletes a lamp, and says its bridge must connect again for it to come back', async () => {
    const run = await runDevices(['delete', lamps.parked], env);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`deleted lamp ${lamps.parked} (owner erin, bridge connected since 2026-12-01T10:00:00.000Z)`);
    expect(run.stdout).toContain("its bridge is connected now: restart the lamp's broker");
    expect((await rows()).map((row) => row.device_id)).not.toContain(lamps.parked);
    // The owner stays: they may own other lamps, or claim one again.
    expect((await pool.query("SELECT 1 FROM users WHERE username = 'erin'")).rowCount).toBe(1);
  });

  it('in REGISTRY_SCHEMA=django mode says in one line that the LAMPI site owns the lamps, and exits 1', async () => {
    for (const args of [['list'], ['claim', codes.bob, 'frank'], ['delete', lamps.bob]]) {
      const run = await runDevices(args, { ...env, REGISTRY_SCHEMA: 'django' });
      expect(run.code).toBe(1);
      expect(run.stderr).toBe(
        'devices: REGISTRY_SCHEMA=django: the LAMPI site owns the lamps; list, claim and delete them on the site (its admin), not here\n',
      );
    }
    expect((await rows()).map((row) => row.device_id)).toContain(lamps.bob);
  });
});
