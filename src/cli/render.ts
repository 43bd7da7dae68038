/** Turns command results and errors into human text or one JSON object. Pure: returns strings. */
import type { ChalkInstance } from 'chalk';
import { CedanaError } from '../errors.js';
import type { CheckResultData } from '../commands/check.js';
import type { DumpResult } from '../commands/dump.js';
import type { RestoreResult } from '../commands/restore.js';
import type { MigrateResult } from '../commands/migrate.js';

export type CommandResult = DumpResult | RestoreResult | CheckResultData | MigrateResult;

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function errorJson(command: string, err: CedanaError): Record<string, unknown> {
  return {
    ok: false,
    command,
    error: { code: err.code, message: err.message, hint: err.hint ?? null, ...err.details },
  };
}

export function resultJson(r: CommandResult): Record<string, unknown> {
  if (r.command === 'check') {
    const { error, ...rest } = r;
    const base = { ...rest, command: 'check' };
    return error ? { ...base, ok: false, error: errorJson('check', error).error } : { ...base, ok: r.ok };
  }
  return { ok: true, ...r };
}

export function renderError(command: string, err: CedanaError, c: ChalkInstance): string {
  const who = command === "cedana" ? "cedana" : `cedana ${command}`;
  const lines = [`${c.red("error")} ${c.dim(`[${err.code}]`)} ${who}: ${err.message}`];
  if (err.hint) lines.push(`  ${c.yellow('hint:')} ${err.hint}`);
  if (err.details.processRunning === true) lines.push(`  the process is still running`);
  if (err.details.processRunning === false) lines.push(`  ${c.red('the process is no longer running')}`);
  if (err.details.sourceResumed === true) lines.push('  the source process was resumed where it was');
  if (err.details.sourceResumed === false) lines.push(`  ${c.red('the source process is no longer running')}`);
  return lines.join('\n');
}

export function renderHuman(r: CommandResult, c: ChalkInstance): string {
  switch (r.command) {
    case 'dump': {
      const lines = [
        `${c.green('✔')} dumped PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) to ${r.image === '-' ? 'stdout' : r.image}`,
        `  memory ${formatBytes(r.memoryBytes)}, image ${formatBytes(r.bytes)}, frozen ${formatMs(r.frozenMs)}, total ${formatMs(r.durationMs)}`,
        `  ${r.leftRunning ? 'the process was left running' : 'the process was ended after the dump; `cedana restore` brings it back'}`,
      ];
      for (const d of r.decisions) lines.push(`  ${c.dim('decided')} ${d}`);
      return lines.join('\n');
    }
    case 'restore':
      return [
        `${c.green('✔')} restored PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) from ${r.image === '-' ? 'stdin' : r.image}`,
        `  CRIU restore ${formatMs(r.restoreMs)}, total ${formatMs(r.durationMs)}; it runs detached from cedana`,
      ].join('\n');
    case 'migrate': {
      const lines = [
        `${c.green('✔')} migrated PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) to ${r.target}: it runs there as PID ${r.targetPid}`,
        `  downtime ${formatMs(r.downtimeMs)}, total ${formatMs(r.durationMs)}, sent ${formatBytes(r.bytesSent)} (memory ${formatBytes(r.memoryBytes)})`,
      ];
      for (const d of r.decisions) lines.push(`  ${c.dim('decided')} ${d}`);
      return lines.join('\n');
    }
    case 'check': {
      const mark = (ok: boolean): string => (ok ? c.green('✔') : c.red('✘'));
      const opt = (ok: boolean): string => (ok ? c.green('✔') : c.yellow('–'));
      const lines = [
        `${mark(r.root)} running as root`,
        `${mark(r.criu.found)} criu ${r.criu.found ? `${r.criu.version} (${r.criu.path})` : `not usable: ${r.criu.detail ?? ''}`}`,
        `${mark(r.criu.check === 'ok')} criu check: ${r.criu.check}${r.criu.check === 'failed' && r.criu.detail ? `\n    ${r.criu.detail.split('\n').join('\n    ')}` : ''}`,
      ];
      for (const f of r.features) lines.push(`${opt(f.available)} ${f.name}: ${f.available ? 'yes' : 'no'} — ${f.enables}${f.detail ? ` ${c.dim(`(${f.detail})`)}` : ''}`);
      lines.push(r.ok ? c.green('this host can dump and restore') : c.red('this host cannot dump and restore yet'));
      return lines.join('\n');
    }
  }
}
