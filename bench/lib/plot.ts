/**
 * The sweep's plot as an SVG, written by hand (no plotting dependency): throughput and p99
 * latency against offered rate, one line per system. Offered rates are evenly spaced
 * categories (the last may be max load, which has no number); latency is on a log scale,
 * since the yardsticks' range from a millisecond to seconds.
 */
export interface SweepSeries {
  label: string;
  /** One per offered rate, in the order of `rates`; NaN where the run failed. */
  throughput: number[];
  p99: number[];
}

const COLORS = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e'];
const W = 420;
const H = 260;
const M = { left: 62, right: 16, top: 28, bottom: 40 };

const esc = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const num = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 0 });

interface Axis {
  ticks: number[];
  at(value: number): number;
}

function linearAxis(max: number): Axis {
  const step = 10 ** Math.floor(Math.log10(max || 1));
  const nice = [1, 2, 5, 10].map((k) => k * step).find((s) => max / s <= 6) ?? step * 10;
  const top = Math.ceil((max || 1) / nice) * nice;
  const ticks = Array.from({ length: Math.round(top / nice) + 1 }, (_, i) => i * nice);
  return { ticks, at: (v) => M.top + (H - M.top - M.bottom) * (1 - v / top) };
}

function logAxis(min: number, max: number): Axis {
  const lo = Math.floor(Math.log10(Math.max(0.1, min)));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(max, 1))));
  const ticks = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
  return { ticks, at: (v) => M.top + (H - M.top - M.bottom) * (1 - (Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) };
}

function panel(
  x0: number,
  title: string,
  rateLabels: string[],
  series: SweepSeries[],
  values: (s: SweepSeries) => number[],
  axis: Axis,
): string {
  const xs = rateLabels.map((_, i) => x0 + M.left + ((W - M.left - M.right) * (i + 0.5)) / rateLabels.length);
  const parts: string[] = [
    `<text x="${x0 + W / 2}" y="16" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
    `<line x1="${x0 + M.left}" y1="${H - M.bottom}" x2="${x0 + W - M.right}" y2="${H - M.bottom}" stroke="#333"/>`,
    `<line x1="${x0 + M.left}" y1="${M.top}" x2="${x0 + M.left}" y2="${H - M.bottom}" stroke="#333"/>`,
    `<text x="${x0 + W / 2}" y="${H - 6}" text-anchor="middle">offered rate (events/s)</text>`,
  ];
  for (const tick of axis.ticks) {
    const y = axis.at(tick).toFixed(1);
    parts.push(
      `<line x1="${x0 + M.left}" y1="${y}" x2="${x0 + W - M.right}" y2="${y}" stroke="#ddd"/>`,
      `<text x="${x0 + M.left - 4}" y="${y}" text-anchor="end" dominant-baseline="middle">${num(tick)}</text>`,
    );
  }
  rateLabels.forEach((label, i) =>
    parts.push(`<text x="${xs[i]!.toFixed(1)}" y="${H - M.bottom + 14}" text-anchor="middle">${esc(label)}</text>`),
  );
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length]!;
    const points = values(s)
      .map((v, i) => (Number.isFinite(v) ? `${xs[i]!.toFixed(1)},${axis.at(v).toFixed(1)}` : ''))
      .filter(Boolean);
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.join(' ')}"/>`);
    for (const point of points) {
      const [cx, cy] = point.split(',');
      parts.push(`<circle cx="${cx}" cy="${cy}" r="3" fill="${color}"/>`);
    }
  });
  return parts.join('\n');
}

/** `rates`: offered rates, 0 standing for max load. */
export function sweepSvg(title: string, rates: number[], series: SweepSeries[]): string {
  const labels = rates.map((r) => (r > 0 ? num(r) : 'max'));
  const throughputs = series.flatMap((s) => s.throughput).filter(Number.isFinite);
  const p99s = series.flatMap((s) => s.p99).filter(Number.isFinite);
  const legendY = H + 8;
  const height = legendY + series.length * 18 + 24;
  const legend = series.map((s, k) => {
    const y = legendY + k * 18 + 12;
    return (
      `<line x1="${M.left}" y1="${y}" x2="${M.left + 24}" y2="${y}" stroke="${COLORS[k % COLORS.length]}" stroke-width="3"/>` +
      `<text x="${M.left + 30}" y="${y}" dominant-baseline="middle">${esc(s.label)}</text>`
    );
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    panel(0, 'throughput (events/s)', labels, series, (s) => s.throughput, linearAxis(Math.max(1, ...throughputs))),
    panel(
      W,
      'p99 latency publish → end (ms, log scale)',
      labels,
      series,
      (s) => s.p99,
      logAxis(Math.min(...p99s, 1), Math.max(1, ...p99s)),
    ),
    ...legend,
    `<text x="${M.left}" y="${height - 8}" fill="#555">${esc(title)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}
