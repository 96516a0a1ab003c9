/**
 * REGISTRY_SCHEMA=django end to end: `npm run migrate`, `npm run subscriber` and `npm run worker`
 * as real processes against a real LAMPI site (Django 3.2, test/django) on its own database, a
 * real broker, Redis, and Keen played by the fake Keen. What the site sees is read through
 * Django's own ORM and admin; what the lamp sees is its retained association message.
 */
import mqtt from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { startDjangoSite, type DjangoSite } from '../support/django.js';
import { startFakeKeen, type FakeKeen, type StoredEvent } from '../support/fake-keen.js';
import { randomDeviceId, randomPrefix } from '../support/ids.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { sleep, startService, waitFor } from '../support/processes.js';

const services = inject('services');
const PROJECT = 'djangoproject';
const WRITE_KEY = 'django-e2e-write-key-0123456789';
const PARKED = 'parked_device_user';

interface SiteLamp {
  device_id: string;
  name: string;
  association_code: string;
  owner: string;
  created_at: string;
}

describe('a LAMPI site as the registry (REGISTRY_SCHEMA=django)', () => {
  const prefix = randomPrefix('django');
  // Lamps the site had before lampi-ingest started: one claimed by a user, one still parked.
  const claimedBefore = randomDeviceId();
  const parkedBefore = randomDeviceId();
  const fresh = randomDeviceId();
  let site: DjangoSite;
  let keen: FakeKeen;
  let pipeline: Pipeline;
  let lamp: mqtt.MqttClient;
  let fleetBefore: SiteLamp[];

  const lampsOnSite = (ids: string[]) =>
    site.python<SiteLamp[]>(
      `emit([{'device_id': l.device_id, 'name': l.name, 'association_code': l.association_code, 'owner': ` +
        `l.user.username, 'created_at': l.created_at.isoformat()} for l in ` +
        `Lampi.objects.filter(device_id__in=${JSON.stringify(ids)}).order_by('device_id')])`,
    );
  const connect = (device: string, state: '1' | '0') =>
    lamp.publishAsync(`$SYS/broker/connection/${device}_broker/state`, state, { qos: 1 });
  const changeState = (device: string, state: object) =>
    lamp.publishAsync(`/devices/${device}/lamp/changed`, JSON.stringify(state), { qos: 1 });
  const ofDevice = (collection: string, device: string) => keen.eventsIn(collection).filter((e) => e.device_id === device);
  const monitoring = (device: string) =>
    ofDevice('devicemonitoring', device)
      .sort((a, b) => a.keen.timestamp.localeCompare(b.keen.timestamp))
      .map((e) => e.state);

  /** The association message the broker keeps for the lamp, as a lamp subscribing now receives it. */
  async function retainedAssociation(device: string): Promise<unknown> {
    const client = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-look-${Math.random().toString(16).slice(2, 8)}` });
    try {
      const got = new Promise<unknown>((resolve) =>
        client.on(
          'message',
          (_t, payload, packet) => packet.retain && resolve(payload.length === 0 ? null : JSON.parse(payload.toString())),
        ),
      );
      await client.subscribeAsync(`/devices/${device}/lamp/associated`, { qos: 1 });
      return await Promise.race([got, sleep(500).then(() => null)]);
    } finally {
      await client.endAsync();
    }
  }
  const retainedBecomes = (device: string, expected: unknown) =>
    waitFor(
      `the retained association message of ${device} to be ${JSON.stringify(expected)}`,
      async () => JSON.stringify(await retainedAssociation(device)) === JSON.stringify(expected) || undefined,
      15_000,
      50,
    );

  beforeAll(async () => {
    site = await startDjangoSite(services.postgres, services.mqtt);
    // The site as the old daemon and its users left it: the parked user, a claimed lamp, a parked one.
    await site.python(`
parked = User.objects.create_user('${PARKED}')
parked.set_unusable_password()
parked.is_active = False
parked.save()
alice = User.objects.create_user('alice', password='alice-pw')
Lampi.objects.create(device_id='${claimedBefore}', user=alice, name='Alice lamp')
Lampi.objects.create(device_id='${parkedBefore}', user=parked)
emit(True)`);
    fleetBefore = await lampsOnSite([claimedBefore, parkedBefore]);
    const migrate = startService('migrate', { DATABASE_URL: site.db.url, REGISTRY_SCHEMA: 'django' });
    expect(await migrate.exited, migrate.output()).toBe(0);
    keen = await startFakeKeen({ projectId: PROJECT, writeKey: WRITE_KEY });
    pipeline = await startPipeline({
      services,
      prefix,
      databaseUrl: site.db.url,
      keen: { url: keen.url, projectId: PROJECT, writeKey: WRITE_KEY },
      workerEnv: { REGISTRY_SCHEMA: 'django' },
    });
    lamp = await mqtt.connectAsync(services.mqtt, { clientId: `${prefix}-lamp` });
  });

  afterEach(({ task }) => {
    if (task.result?.state === 'fail') process.stderr.write(`${pipeline?.logs()}\n`);
  });

  afterAll(async () => {
    for (const device of [claimedBefore, parkedBefore, fresh])
      await lamp?.publishAsync(`/devices/${device}/lamp/associated`, '', { qos: 1, retain: true });
    await lamp?.endAsync();
    await pipeline?.kill();
    await keen?.close();
    await site?.drop();
  });

  it('a new lamp gets the row Django would give it, owned by the parked user, its code on the association topic, and one activations event', async () => {
    const started = Date.now();
    await connect(fresh, '1');
    await changeState(fresh, { on: true, brightness: 0.5 });
    await waitFor(
      'activations, devicemonitoring and devicestate at Keen',
      () => ofDevice('activations', fresh).length === 1 && monitoring(fresh).length === 1 && ofDevice('devicestate', fresh).length === 1,
    );

    const [row] = await lampsOnSite([fresh]);
    expect(row).toMatchObject({ device_id: fresh, name: 'My LAMPI', owner: PARKED });
    expect(row!.association_code).toMatch(/^[0-9a-f]{32}$/);
    expect(Math.abs(Date.parse(row!.created_at) - started)).toBeLessThan(30_000);
    await retainedBecomes(fresh, { associated: false, code: row!.association_code });

    const [activation] = ofDevice('activations', fresh) as [StoredEvent];
    expect(activation).toMatchObject({ device_id: fresh, user: PARKED });
    expect(monitoring(fresh)).toEqual(['connected']);
    expect(ofDevice('devicestate', fresh)[0]).toMatchObject({ device_id: fresh, state: { on: true, brightness: 0.5 } });
    // The site's parked user was used, not a second one made.
    expect(await site.python(`emit(User.objects.filter(username='${PARKED}').count())`)).toBe(1);
  });

  it('the site claims the lamp by its code; the lamp reconnecting stays claimed, its row untouched, its retained message healed', async () => {
    const [before] = await lampsOnSite([fresh]);
    // What the LAMPI site does when a user enters the code: the owner saved, then {"associated": true} published, retained.
    await site.python(`
bob = User.objects.create_user('bob', password='bob-pw')
Lampi.objects.get(association_code='${before!.association_code}').associate_and_publish_associated_msg(bob)
emit(True)`);
    await retainedBecomes(fresh, { associated: true });

    // The broker loses the retained message; the lamp's bridge drops and comes back.
    await lamp.publishAsync(`/devices/${fresh}/lamp/associated`, '', { qos: 1, retain: true });
    await connect(fresh, '0');
    await connect(fresh, '1');
    await waitFor('the disconnect and reconnect recorded', () => monitoring(fresh).length === 3);
    expect(monitoring(fresh)).toEqual(['connected', 'disconnected', 'connected']);
    await retainedBecomes(fresh, { associated: true });
    expect(await lampsOnSite([fresh])).toEqual([{ ...before, owner: 'bob' }]);
    expect(ofDevice('activations', fresh)).toHaveLength(1);
  });

  it('lamps the site had before we started keep their codes and owners, get no activations, and still get devicemonitoring and devicestate', async () => {
    for (const device of [claimedBefore, parkedBefore]) {
      await connect(device, '1');
      await changeState(device, { on: false });
    }
    await waitFor('their devicemonitoring and devicestate', () =>
      [claimedBefore, parkedBefore].every((d) => monitoring(d).length === 1 && ofDevice('devicestate', d).length === 1),
    );
    await retainedBecomes(claimedBefore, { associated: true });
    const parkedRow = fleetBefore.find((l) => l.device_id === parkedBefore)!;
    await retainedBecomes(parkedBefore, { associated: false, code: parkedRow.association_code });
    // An activation would have left in the same Keen batch as the connect; give stragglers a moment anyway.
    await sleep(500);
    expect([...ofDevice('activations', claimedBefore), ...ofDevice('activations', parkedBefore)]).toEqual([]);
    expect(await lampsOnSite([claimedBefore, parkedBefore])).toEqual(fleetBefore);
    expect(monitoring(claimedBefore)).toEqual(['connected']);
  });

  it('a lamp deleted in the site and connecting again is created again: new code, new retained message, new activations', async () => {
    const [before] = await lampsOnSite([fresh]);
    // The seed's own test: stop the lamp's broker, delete the lamp on the site, start the broker again.
    await connect(fresh, '0');
    await waitFor('the disconnect recorded', () => monitoring(fresh).length === 4);
    await site.python(`emit(Lampi.objects.get(device_id='${fresh}').delete()[0])`);
    await connect(fresh, '1');
    await waitFor('a second activations event', () => ofDevice('activations', fresh).length === 2);

    const [after] = await lampsOnSite([fresh]);
    expect(after).toMatchObject({ device_id: fresh, name: 'My LAMPI', owner: PARKED });
    expect(after!.association_code).toMatch(/^[0-9a-f]{32}$/);
    expect(after!.association_code).not.toBe(before!.association_code);
    await retainedBecomes(fresh, { associated: false, code: after!.association_code });
    const tokens = ofDevice('activations', fresh).map((e) => e.keen.uniqueness_token);
    expect(new Set(tokens).size).toBe(2);
    await waitFor('the reconnect recorded', () => monitoring(fresh).length === 5);
    expect(monitoring(fresh)).toEqual(['connected', 'disconnected', 'connected', 'disconnected', 'connected']);
  });

  it("Django's admin lists the lamps we wrote, and `manage.py makemigrations --check` finds no drift", async () => {
    const page = await site.python<{ status: number; content: string }>(`
from django.test import Client
admin = User.objects.create_superuser('admin', 'admin@example.com', 'admin-pw')
client = Client()
client.force_login(admin)
response = client.get('/admin/lampi/lampi/')
emit({'status': response.status_code, 'content': response.content.decode()})`);
    expect(page.status).toBe(200);
    for (const device of [fresh, claimedBefore, parkedBefore]) expect(page.content).toContain(device);
    expect(page.content).toContain('3 lampis');

    const check = await site.manage(['makemigrations', '--check', '--dry-run']);
    expect(check.stdout).toContain('No changes detected');
  });
});
