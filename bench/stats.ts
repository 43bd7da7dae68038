/** Medians, goals and the printed table. Pure. */

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export type Unit = 'ms' | 'MB' | 'MB/s' | 'units/s';

/** A goal on the ratio value/baseline, or on the value itself. */
export interface Goal {
  on: 'ratio' | 'value';
  op: '<=' | '<' | '>=';
  limit: number;
}

export interface Row {
  name: string;
  unit: Unit;
  value: number;
  baseline?: number;
  /** What the baseline is, e.g. "criu dump". */
  baselineLabel?: string;
  goal?: Goal;
}

export interface Evaluated extends Row {
  ratio?: number;
  met?: boolean;
}

export function evaluate(row: Row): Evaluated {
  const ratio = row.baseline !== undefined && row.baseline > 0 ? row.value / row.baseline : undefined;
  if (!row.goal) return { ...row, ratio };
  const x = row.goal.on === 'ratio' ? ratio : row.value;
  const met = x === undefined ? false : row.goal.op === '<=' ? x <= row.goal.limit : row.goal.op === '>=' ? x >= row.goal.limit : x < row.goal.limit;
  return { ...row, ratio, met };
}

export const MB = 1e6;

function fmt(v: number | undefined, unit: Unit): string {
  if (v === undefined || Number.isNaN(v)) return '—';
  return unit === 'ms' ? `${Math.round(v)} ms` : `${v.toFixed(1)} ${unit}`;
}

function fmtGoal(row: Row): string {
  if (!row.goal) return '—';
  const op = row.goal.op === '<=' ? '≤' : row.goal.op === '>=' ? '≥' : '<';
  return row.goal.on === 'ratio' ? `ratio ${op} ${row.goal.limit}` : `${op} ${row.goal.limit} ${row.unit}`;
}

/** A plain-text table: name, median, baseline, ratio, goal, met. */
export function renderTable(rows: Evaluated[]): string {
  const header = ['name', 'median', 'baseline', 'ratio', 'goal', 'met'];
  const cells = rows.map((r) => [
    r.name,
    fmt(r.value, r.unit),
    r.baseline === undefined ? '—' : `${fmt(r.baseline, r.unit)}${r.baselineLabel ? ` (${r.baselineLabel})` : ''}`,
    r.ratio === undefined ? '—' : r.ratio.toFixed(3),
    fmtGoal(r),
    r.met === undefined ? '—' : r.met ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string => c.map((s, i) => (i === 1 || i === 3 ? s.padStart(widths[i]!) : s.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n');
}
