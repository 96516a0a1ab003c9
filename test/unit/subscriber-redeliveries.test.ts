/** The redelivery ledger's pure parts: a digest that does not depend on how the payload is given, and ids made a group at a time. */
import { describe, expect, it } from 'vitest';
import { contentDigest, newMessageId, newMessageIds } from '../../src/subscriber/redeliveries.js';

const utf8 = new TextEncoder();

describe('contentDigest', () => {
  it('is the same for the payload as bytes and as its exact text (so a DUP resend, looked up by its bytes, finds its entry)', () => {
    const topic = '/devices/b827eb0a1b2c/lamp/changed';
    for (const text of ['{"on":true}', '\uFEFF{"on":true}', '{"client":"lámpara 💡"}', '1', '']) {
      expect(contentDigest(topic, text), text).toBe(contentDigest(topic, utf8.encode(text)));
    }
  });

  it('tells topics and payloads apart', () => {
    const digests = new Set([
      contentDigest('a', 'b'),
      contentDigest('a', 'c'),
      contentDigest('ab', ''),
      contentDigest('a', utf8.encode('\0b')),
    ]);
    expect(digests.size).toBe(4);
  });
});

describe('newMessageIds', () => {
  it('gives distinct 32-hex-digit ids, within a group and across groups, like newMessageId', () => {
    const ids = [...newMessageIds(1000), ...newMessageIds(1000), ...newMessageIds(1)];
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of [...ids, newMessageId()]) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(newMessageIds(0)).toEqual([]);
  });
});
