/**
 * How `npm run devices` prints lamps: a table or JSON for `list`, every field for `show`. Pure;
 * nothing here sees a setting, so no secret can reach the output.
 */
import { IMPORTED_BY, type LampRecord } from './device-admin.js';

/** The lamp as `--json` prints it, named as the registry's columns are. */
export function lampJson(lamp: LampRecord, associationTopic: string) {
  return {
    device_id: lamp.deviceId,
    name: lamp.name,
    owner: lamp.owner,
    owner_active: lamp.ownerActive,
    parked: lamp.parked,
    association_code: lamp.associationCode,
    association_topic: associationTopic,
    created_at: lamp.createdAt.toISOString(),
    created_by: lamp.createdBy,
    bridge_connected: lamp.bridgeConnected,
    bridge_state_at: lamp.bridgeStateAt?.toISOString() ?? null,
    bridge_state_message_id: lamp.bridgeStateMessageId,
  };
}

export function bridgeText(lamp: LampRecord): string {
  if (lamp.bridgeConnected === null) return 'no bridge state yet';
  return `${lamp.bridgeConnected ? 'connected' : 'disconnected'} since ${lamp.bridgeStateAt?.toISOString() ?? '?'}`;
}

/** One row per lamp, the free-text name last; then a count. */
export function lampTable(lamps: LampRecord[]): string[] {
  if (lamps.length === 0) return ['no lamps in the registry'];
  const header = ['DEVICE_ID', 'OWNER', 'BRIDGE', 'ASSOCIATION_CODE', 'CREATED_AT', 'NAME'];
  const rows = lamps.map((lamp) => [
    lamp.deviceId,
    lamp.parked ? `${lamp.owner} (parked)` : lamp.owner,
    lamp.bridgeConnected === null ? '-' : lamp.bridgeConnected ? 'connected' : 'disconnected',
    lamp.associationCode,
    lamp.createdAt.toISOString(),
    lamp.name,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ');
  const parked = lamps.filter((lamp) => lamp.parked).length;
  return [
    line(header),
    ...rows.map(line),
    `${lamps.length} lamp${lamps.length === 1 ? '' : 's'}: ${lamps.length - parked} claimed, ${parked} parked`,
  ];
}

export function lampDetails(lamp: LampRecord, associationTopic: string): string[] {
  const fields: Array<[string, string]> = [
    ['device_id', lamp.deviceId],
    ['name', lamp.name],
    ['owner', `${lamp.owner}${lamp.parked ? ' (parked: nobody has claimed it)' : ''}${lamp.ownerActive ? '' : ', inactive'}`],
    ['association_code', lamp.associationCode],
    ['association_topic', associationTopic],
    ['created_at', lamp.createdAt.toISOString()],
    ['created_by', lamp.createdBy === IMPORTED_BY ? 'import (npm run devices -- import)' : `bridge connect, message ${lamp.createdBy}`],
    ['bridge', bridgeText(lamp)],
    ['bridge_state_message', lamp.bridgeStateMessageId ?? '-'],
  ];
  const width = Math.max(...fields.map(([key]) => key.length));
  return fields.map(([key, value]) => `${key.padEnd(width)}  ${value}`);
}
