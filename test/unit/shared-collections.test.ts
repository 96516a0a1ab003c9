import { describe, expect, it } from 'vitest';
import { groupBy } from '../../src/shared/collections.js';

describe('groupBy', () => {
  it('keeps the groups in first-seen order and each group in the order of its items', () => {
    const states = [
      { lamp: 'b', n: 1 },
      { lamp: 'a', n: 2 },
      { lamp: 'b', n: 3 },
      { lamp: 'c', n: 4 },
      { lamp: 'a', n: 5 },
    ];
    const groups = groupBy(states, (s) => s.lamp);
    expect([...groups.keys()]).toEqual(['b', 'a', 'c']);
    expect([...groups.values()].map((group) => group.map((s) => s.n))).toEqual([[1, 3], [2, 5], [4]]);
  });

  it('groups by object identity, and gives nothing for nothing', () => {
    const left = {};
    const right = {};
    const groups = groupBy([1, 2, 3], (n) => (n % 2 ? left : right));
    expect(groups.get(left)).toEqual([1, 3]);
    expect(groups.get(right)).toEqual([2]);
    expect(groupBy([], (n: number) => n).size).toBe(0);
  });
});
