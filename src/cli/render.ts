/** Turns command results and errors into human text or one JSON object. Pure: returns strings. */
import type { ChalkInstance } from 'chalk';
import { CedanaError } from '../errors.js';
import type { CheckResultData } from '../commands/check.js';
import type { DumpResult } from '../commands/dump.js';
import type { DumpEveryResult } from '../commands/dump-every.js';
import type { RestoreResult } from '../commands/restore.js';
import type { MigrateResult } from '../commands/migrate.js';
import type { InspectResult } from '../commands/inspect.js';
import type { ImageBuildResult } from '../commands/image.js';
import type { ArchiveRestoreResult, ContainerDumpResult, ContainerMigrateResult, ContainerRestoreResult } from '../commands/container.js';

export type CommandResult = DumpResult | DumpEveryResult | RestoreResult | CheckResultData | MigrateResult | InspectResult | ContainerDumpResult | ContainerRestoreResult | ArchiveRestoreResult | ContainerMigrateResult | ImageBuildResult;

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
  if (r.command === 'inspect') {
    const { error, ok, command, ...rest } = r;
    return { ok, command, ...rest, ...(error ? { error: errorJson('inspect', error).error } : {}) };
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
  if (Array.isArray(err.details.sourceStopped)) lines.push(`  ${c.yellow('the source process is left stopped (SIGSTOP) where it was')}`);
  else if (err.details.targetState === 'unknown' && err.details.sourceResumed === false) lines.push(`  ${c.yellow('the source is left paused where it was')}`);
  else if (err.details.sourceResumed === false) lines.push(`  ${c.red('the source process is no longer running')}`);
  return lines.join('\n');
}

export function renderHuman(r: CommandResult, c: ChalkInstance): string {
  switch (r.command) {
    case 'dump': {
      if ('container' in r) {
        return [
          `${c.green('✔')} dumped container ${r.container} (${r.runtime}, ${r.processes} process${r.processes === 1 ? '' : 'es'}) to ${r.image === '-' ? 'stdout' : r.image}`,
          `  memory ${formatBytes(r.memoryBytes)}, image ${formatBytes(r.bytes)}, total ${formatMs(r.durationMs)}; root file system ${r.rootfs === 'full' ? 'carried in the image' : 'left in place'}`,
          `  ${r.leftRunning ? 'the container was left running' : 'the container was ended after the dump; `cedana restore IMAGE --container` brings it back'}`,
          ...r.decisions.map((d) => `  ${c.dim('decided')} ${d}`),
        ].join('\n');
      }
      if ('every' in r) {
        const lines = [
          `${c.green('✔')} made ${r.made} checkpoint(s) of PID ${r.pid} every ${formatMs(r.every.intervalMs)}; ${r.ended === 'process-exited' ? 'the process ended' : 'stopped'}`,
          `  kept ${r.checkpoints.length} (the newest ${r.every.keep} restorable, with the parents they need)${r.failed > 0 ? `, ${r.failed} failed` : ''}:`,
          ...r.checkpoints.map((k) => `    ${k.image} ${formatBytes(k.bytes)}${k.parent ? c.dim(' incremental') : c.dim(' full')}`),
          ...r.errors.map((e) => `  ${c.red('failed')} ${e}`),
        ];
        return lines.join('\n');
      }
      const lines = [
        `${c.green('✔')} dumped PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) to ${r.image === '-' ? 'stdout' : r.image}`,
        `  memory ${formatBytes(r.memoryBytes)}, image ${formatBytes(r.bytes)}, frozen ${formatMs(r.frozenMs)}, total ${formatMs(r.durationMs)}`,
        `  ${r.leftRunning ? 'the process was left running' : 'the process was ended after the dump; `cedana restore` brings it back'}`,
      ];
      if (r.gpu) lines.push(`  GPU: ${r.gpu.memoryUsedMiB} MiB of device memory moved to host memory by cuda-checkpoint in ${formatMs(r.gpu.checkpointMs)} before the freeze${r.gpu.pausedMs !== undefined ? `; its GPU work was held ${formatMs(r.gpu.pausedMs)} in all` : ''}`);
      for (const d of r.decisions) lines.push(`  ${c.dim('decided')} ${d}`);
      return lines.join('\n');
    }
    case 'restore':
      if ('from' in r) {
        const engine = { podman: 'Podman', 'cri-o': 'CRI-O', containerd: 'containerd', cedana: 'cedana' }[r.from.engine];
        return [
          `${c.green('✔')} restored container ${r.container} (${r.runtime}) from ${engine}'s checkpoint of ${r.from.name || r.from.id} (${r.image === '-' ? 'stdin' : r.image}): its init is PID ${r.pid}`,
          `  bundle and root file system in ${r.bundle}${r.netns ? `, network namespace ${r.netns}` : ''}; total ${formatMs(r.durationMs)}; checksums ${r.checksums === 'verified' ? c.green('verified') : c.yellow('unverified (the archive carries none)')}`,
          ...r.notes.map((n) => `  ${c.dim('decided')} ${n}`),
        ].join('\n');
      }
      if ('container' in r) {
        return [
          `${c.green('✔')} restored container ${r.container} (${r.runtime}) from ${r.image === '-' ? 'stdin' : r.image}: its init is PID ${r.pid}`,
          `  bundle ${r.bundle}${r.bundleCreated === 'none' ? '' : ` (put in place: ${r.bundleCreated === 'config' ? 'config.json' : 'config.json and the root file system'})`}; total ${formatMs(r.durationMs)}`,
        ].join('\n');
      }
      return [
        `${c.green('✔')} restored PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) from ${r.image === '-' ? 'stdin' : r.image}`,
        `  CRIU restore ${formatMs(r.restoreMs)}, total ${formatMs(r.durationMs)}; it runs detached from cedana`,
        ...r.remapped.map((m) => `  ${c.dim('remapped')} ${m.from} → ${m.to}`),
        ...r.remappedPorts.map((m) => `  ${c.dim('remapped')} port ${m.from} → ${m.to}`),
        ...r.placed.map((p) => `  ${c.dim('put in place')} ${p} (carried by the image)`),
        ...r.decisions.map((d) => `  ${c.dim('decided')} ${d}`),
        ...(r.gpu ? [`  GPU state of PID ${r.gpu.pids.join(', ')} back on the GPU (${formatMs(r.gpu.restoreMs)} after CRIU's restore)`] : []),
      ].join('\n');
    case 'migrate': {
      if ('container' in r) {
        return [
          `${c.green('✔')} migrated container ${r.container} (${r.runtime}) to ${r.target}: its init is PID ${r.targetPid} there`,
          `  downtime ${formatMs(r.downtimeMs)}, total ${formatMs(r.durationMs)}, sent ${formatBytes(r.bytesSent)}; root file system ${r.rootfs === 'full' ? 'sent' : 'already there'}`,
          ...r.decisions.map((d) => `  ${c.dim('decided')} ${d}`),
        ].join('\n');
      }
      const lines = [
        `${c.green('✔')} migrated PID ${r.pid} (${r.processes} process${r.processes === 1 ? '' : 'es'}) to ${r.target}: it runs there as PID ${r.targetPid}`,
        `  downtime ${formatMs(r.downtimeMs)}, total ${formatMs(r.durationMs)}, sent ${formatBytes(r.bytesSent)} (memory ${formatBytes(r.memoryBytes)})`,
      ];
      for (const d of r.decisions) lines.push(`  ${c.dim('decided')} ${d}`);
      return lines.join('\n');
    }
    case 'image build': {
      const name = r.tag ?? 'NAME';
      return [
        `${c.green('✔')} wrote the checkpoint image ${r.image} (${formatBytes(r.layerBytes)}): container ${r.container.name} (${r.container.engine}, runtime ${r.container.runtime}), ${r.digest}`,
        `  annotated for Podman, CRI-O and containerd${r.tag ? `; named ${r.tag}` : ''}. Next:`,
        `    podman load -i ${r.image}${r.tag ? '' : `   ${c.dim('(no --tag: tag it with podman tag IMAGE-ID NAME)')}`}`,
        `    podman container restore ${name}   ${c.dim(`(Podman with runtime ${r.container.runtime}; the image ${r.annotations['io.podman.annotations.checkpoint.rootfsImageName'] ?? 'it was made from'} must be there)`)}`,
        `  or push it for a cluster: skopeo copy oci-archive:${r.image} docker://REGISTRY/${name.replace(/^localhost\//, '')}`,
        `    and restore it in CRI-O as a pod container with image: REGISTRY/${name.replace(/^localhost\//, '')} (checkpoint/restore enabled in CRI-O)`,
      ].join('\n');
    }
    case 'inspect':
      return renderInspect(r, c);
    case 'check': {
      const mark = (ok: boolean): string => (ok ? c.green('✔') : c.red('✘'));
      const opt = (ok: boolean): string => (ok ? c.green('✔') : c.yellow('–'));
      const lines = [
        `${mark(r.root)} running as root`,
        `${mark(r.criu.found)} criu ${r.criu.found ? `${r.criu.version} (${r.criu.path})` : `not usable: ${r.criu.detail ?? ''}`}${r.criu.hint ? `\n    ${c.yellow('hint:')} ${r.criu.hint}` : ''}`,
        `${mark(r.criu.check === 'ok')} criu check: ${r.criu.check}${r.criu.check === 'failed' && r.criu.detail ? `\n    ${r.criu.detail.split('\n').join('\n    ')}` : ''}`,
      ];
      const missing = r.capabilities.missing;
      const blocking = missing.some((m) => m.required);
      lines.push(`${blocking ? c.red('✘') : opt(missing.length === 0)} capabilities: ${missing.length === 0 ? 'all that CRIU uses' : `missing ${missing.map((m) => m.name).join(', ')}`}`);
      for (const m of missing) lines.push(`    ${m.required ? c.red(m.name) : c.yellow(m.name)}: ${m.prevents}`);
      for (const f of r.features) lines.push(`${opt(f.available)} ${f.name}: ${f.available ? 'yes' : 'no'} — ${f.enables}${f.detail ? ` ${c.dim(`(${f.detail})`)}` : ''}`);
      lines.push(r.ok ? c.green('this host can dump and restore') : c.red('this host cannot dump and restore yet'));
      // The first blocker's remedy, unless the CRIU line above already gave it.
      if (!r.ok && r.error?.hint && r.error.hint !== r.criu.hint) lines.push(`  ${c.yellow('hint:')} ${r.error.hint}`);
      return lines.join('\n');
    }
  }
}

const hex = (n: number): string => n.toString(16).padStart(12, '0');

function renderInspect(r: InspectResult, c: ChalkInstance): string {
  const lines: string[] = [];
  const m = r.manifest;
  lines.push(`${r.ok ? c.green('✔') : c.red('✘')} image ${r.image === '-' ? 'from stdin' : r.image}`);
  if (m) {
    lines.push(`  made ${m.createdAt} on ${m.hostname} (${m.arch}, kernel ${m.kernel}) by cedana ${m.cedanaVersion} with CRIU ${m.criuVersion}`);
    const o = m.options;
    const opts = [o.shellJob && 'shell-job', o.tcpEstablished && 'tcp-established', o.tcpClose && 'tcp-close', o.fileLocks && 'file-locks',
      o.externalUnix.length > 0 && `external unix ${o.externalUnix.join(',')}`, o.leaveRunning && 'leave-running'].filter(Boolean);
    lines.push(`  options: ${opts.length > 0 ? opts.join(', ') : 'none'}; network lock ${o.networkLock}`);
    for (const n of m.notes) lines.push(`  ${c.dim('decided')} ${n}`);
    if (m.container && !m.layout) {
      const k = m.container;
      lines.push(`  container ${k.id} (${k.runtime}), bundle ${k.bundle}; root file system ${k.rootfs.path}: ${k.rootfs.mode === 'full' ? 'carried whole' : k.rootfs.mode === 'changes' ? `its changes carried, over the base ${(k.rootfs.base ?? []).join(':')}` : 'expected in place'}`);
    }
  } else if (!r.containerArchive) {
    lines.push(`  ${c.red('no readable manifest')}`);
  }
  const a = r.containerArchive;
  if (a) {
    const engine = { podman: 'Podman', 'cri-o': 'CRI-O (Kubernetes)', containerd: 'containerd (Kubernetes)', cedana: 'cedana' }[a.engine];
    lines.push(`  container checkpoint archive (checkpointctl layout) from ${engine}${a.runtime ? `, runtime ${a.runtime}` : ''}`);
    lines.push(`  container ${a.name || '(unnamed)'} ${c.dim(a.id)}${a.pod ? ` in pod ${a.pod.namespace ?? ''}/${a.pod.name ?? ''}` : ''}`);
    lines.push(`  image ${a.image.name ?? a.image.requested ?? '(not named)'}${a.image.id ?? a.image.ref ? ` ${c.dim(a.image.id ?? a.image.ref ?? '')}` : ''}`);
    if (a.command.length > 0) lines.push(`  command ${a.command.join(' ')}`);
    const k = a.containerConfig;
    lines.push(`  runs as ${k.user ? `${k.user.uid}:${k.user.gid}` : 'root'} in ${k.cwd ?? '/'}; ${k.env.length} environment variable(s); mounts ${k.mounts.map((m) => m.destination).join(', ') || 'none'}`);
    if (a.created || a.checkpointed) lines.push(`  created ${a.created ?? 'unknown'}${a.checkpointed ? `, checkpointed ${a.checkpointed}` : ''}`);
    for (const i of a.interfaces) lines.push(`  network ${i.network}: ${i.name} ${i.addresses.join(', ')}${i.mac ? ` ${c.dim(i.mac)}` : ''}`);
    if (a.stats) lines.push(`  CRIU's dump: frozen ${formatMs(a.stats.frozenUs / 1000)}, ${a.stats.pagesWritten} pages written of ${a.stats.pagesScanned} scanned`);
    lines.push(`  root file system: ${a.rootfsDiffBytes !== undefined ? `changes ${formatBytes(a.rootfsDiffBytes)}` : 'no changes carried'}${a.deletedFiles.length > 0 ? `, ${a.deletedFiles.length} path(s) deleted` : ''}${a.devShm ? '; /dev/shm carried' : ''}`);
  }
  const s = r.sizes;
  lines.push(`  size ${formatBytes(s.total)} in ${s.files} files: pages ${formatBytes(s.pages)}, metadata ${formatBytes(s.metadata)}, ${s.shipped > 0 ? `shipped files ${formatBytes(s.shipped)}, ` : ''}manifest ${formatBytes(s.manifest)}`);
  const shipped = m?.shipped ?? [];
  if (shipped.length > 0) {
    lines.push(`  carries ${shipped.length} file(s) and directories, put in place on restore where missing:`);
    for (const e of shipped) lines.push(`    ${e.kind === 'dir' ? `${e.path}/` : `${e.path} (${formatBytes(e.size)})`} ${c.dim(`mode ${(e.mode & 0o7777).toString(8)}, owner ${e.uid}:${e.gid}`)}`);
  }
  const algo = r.checksums.algorithm === 'blake3' ? ' (BLAKE3)' : r.checksums.algorithm === 'sha256' ? ' (sha256, image format 1)' : '';
  if (!r.checksums.verified && r.checksums.ok) lines.push(`  checksums ${c.yellow('unverified')}: the archive carries none (only archives cedana writes do)`);
  else if (r.checksums.ok) lines.push(`  checksums${algo} ${c.green('ok')}`);
  else {
    lines.push(`  checksums${algo} ${c.red('do not hold')}:`);
    for (const p of r.checksums.problems) lines.push(`    ${p}`);
  }
  for (const u of r.undecodable) lines.push(`  ${c.red('undecodable')} ${u}`);
  if (r.gpu) {
    const g = r.gpu;
    lines.push(`  GPU: ${g.memoryUsedMiB} MiB of device memory (held in host memory), NVIDIA driver ${g.driverVersion}`);
    for (const d of g.devices) lines.push(`    ${d.name} ${c.dim(`${d.uuid}, ${d.memoryTotalMiB} MiB`)}`);
    for (const p of g.processes) lines.push(`    PID ${p.pid}: ${p.memoryUsedMiB} MiB on ${p.uuids.join(', ') || 'no GPU listed'}`);
  } else {
    lines.push('  GPU: none');
  }
  lines.push(`  processes (${r.processes.length}):`);

  const pids = new Set(r.processes.map((p) => p.pid));
  const depth = new Map<number, number>();
  const depthOf = (pid: number, seen = 0): number => {
    if (depth.has(pid)) return depth.get(pid)!;
    const p = r.processes.find((x) => x.pid === pid);
    const d = p && pids.has(p.ppid) && seen < r.processes.length ? depthOf(p.ppid, seen + 1) + 1 : 0;
    depth.set(pid, d);
    return d;
  };
  for (const p of r.processes) {
    const pad = '    ' + '  '.repeat(depthOf(p.pid));
    lines.push(`${pad}${c.bold(`PID ${p.pid}`)} (parent ${p.ppid}) ${p.state ?? 'state unknown'}${p.threads > 1 ? `, ${p.threads} threads` : ''}: ${p.argv.join(' ')}`);
    lines.push(`${pad}  cwd ${p.cwd ?? '?'}`);
    lines.push(`${pad}  memory: ${p.memory.vmaCount} mappings, ${formatBytes(p.memory.dumpedBytes)} dumped`);
    for (const v of p.memory.mappings) {
      lines.push(`${pad}    ${hex(v.start)}-${hex(v.end)} ${formatBytes(v.size).padStart(10)} ${v.prot}${v.file ? ` ${v.file}` : ''}`);
    }
    lines.push(`${pad}  files (${p.files.length}):`);
    for (const f of p.files) {
      const extra = [f.flags, f.offset !== null && `offset ${f.offset}`, f.size !== null && `size ${f.size}`].filter(Boolean).join(', ');
      lines.push(`${pad}    ${String(f.fd).padStart(3)} ${f.path}${extra ? c.dim(` (${extra})`) : ''}`);
    }
    if (p.sockets.length > 0) {
      lines.push(`${pad}  sockets (${p.sockets.length}):`);
      for (const k of p.sockets) {
        const kind = k.type ? `${k.proto}/${k.type}` : k.proto;
        lines.push(`${pad}    ${String(k.fd).padStart(3)} ${kind} ${k.state} ${k.local || '(unnamed)'}${k.remote ? ` -> ${k.remote}` : ''}`);
      }
    }
  }
  return lines.join('\n');
}
