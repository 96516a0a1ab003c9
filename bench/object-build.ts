/**
 * A micro-benchmark behind the subscriber's and worker's per-message objects (issue 15): a queued
 * state or a Keen event built by spreading another object, against the same object written as a
 * literal. CPU time of this process only, per object built; prints one line each, twice.
 *
 *   node --import tsx bench/object-build.ts
 */
const parsed = Array.from({ length: 1000 }, (_, i) => ({
  kind: 'lamp-state' as const,
  deviceId: `b827eb${String(i).padStart(6, '0')}`,
  state: { on: true, brightness: i / 1000 },
  receivedAt: '2026-12-04T19:00:00.000Z',
}));
let built = 0;

function spread(): void {
  const out = [];
  for (const message of parsed) out.push({ ...message, messageId: 'm', topic: 't', payload: 'p' });
  built += out.length;
}

function literal(): void {
  const out = [];
  for (const message of parsed) {
    const { kind, deviceId, state, receivedAt } = message;
    out.push({ kind, deviceId, state, receivedAt, messageId: 'm', topic: 't', payload: 'p' });
  }
  built += out.length;
}

for (const [name, build] of [
  ['spread', spread],
  ['literal', literal],
  ['spread', spread],
  ['literal', literal],
] as const) {
  for (let i = 0; i < 2000; i++) build();
  const start = process.cpuUsage();
  const rounds = 5000;
  for (let i = 0; i < rounds; i++) build();
  const used = process.cpuUsage(start);
  const ns = ((used.user + used.system) * 1000) / (rounds * parsed.length);
  console.log(`${name.padEnd(8)} ${ns.toFixed(1)} ns per object`);
}
if (built === 0) throw new Error('nothing built');
