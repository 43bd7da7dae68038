/**
 * Everything before the freeze: the tree, the target's facts (preflight), what ships, connections,
 * remapping, the GPU plan.
 */
import { execa } from 'execa';
import { readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { restoreFlagArgs } from '../criu/options.js';
import { decideDumpOptions } from '../criu/options.js';
import { refuseOtherUsers } from '../criu/capabilities.js';
import { CedanaError } from '../errors.js';
import { hostFacts } from '../host.js';
import { examineTree } from '../proc/tree.js';
import { footprint } from './footprint.js';
import { judgePreflight, runPreflight, type TargetFacts } from './preflight.js';
import { judgeSharedLocks, placeProbes, removeProbes } from './shared-locks.js';
import { addressOf, decideConnections, type Connection } from '../image/connections.js';
import { remapPath, type PortMap } from '../image/remap.js';
import { deletedOpenFiles, describeShipped, ghostLimit, planShipping, shipCandidates, shippingNotes } from '../image/ship.js';
import { measureThroughput } from './postcopy.js';
import type { TcpSocket } from '../proc/sockets.js';
import { describeLock } from '../proc/locks.js';
import { CudaCheckpoint, planGpuRestore } from '../gpu/cuda.js';
import { remoteGpuHost, sshExec } from '../gpu/remote.js';
import { planGpu } from '../commands/dump.js';
import { DEFAULT_MIN_THROUGHPUT, type Prepared, type Progress } from './context.js';

/** Everything before the freeze: the tree, the target's facts, shipping, connections, remapping. */
export async function prepare(
  c: Pick<Prepared, 'args' | 'session' | 'links' | 'work' | 'report' | 'criu' | 'networkLock'>,
  state: Progress,
): Promise<Prepared> {
  const { args, session, work, report, criu } = c;
  report.phase(`preflight on ${args.to}`);
  const facts = await examineTree(args.pid);
  await refuseOtherUsers(facts.processes);
  const decisions = decideDumpOptions(facts, { tcp: args.tcp, fileLocks: args.fileLocks, leaveRunning: false });
  const doomed = facts.locks.filter((l) => l.mapped);
  if (doomed.length > 0 && !args.allowLostLocks) {
    throw new CedanaError('LOCK_LOST', `CRIU 4.2 would not restore ${doomed.map(describeLock).join('; ')}: the process also maps that file`, {
      hint: 'nothing was frozen. A program that relies on the lock (SQLite\'s -shm) can corrupt its data without it; --allow-lost-locks migrates anyway',
      details: { files: [...new Set(doomed.map((l) => l.path))], predicted: true },
    });
  }
  const pids = facts.processes.map((p) => p.pid);
  const fp = await footprint(pids);
  state.treePids = fp.pids;
  const maps = args.mapPaths ?? [];
  const ports = args.mapPorts ?? [];
  const policy = args.ship ?? 'auto';
  const ghost = ghostLimit(await deletedOpenFiles(pids), policy);
  const cands = await shipCandidates(pids);
  const dest = (p: string): string => remapPath(p, maps) ?? p;
  const listening = checkPortMaps(facts.tcp, ports);
  const gpuPlan = await planGpu(pids, args, decisions.notes);
  if (gpuPlan && args.postcopy) {
    throw new CedanaError('GPU_UNSUPPORTED', `post-copy cannot move GPU state: cuda-checkpoint restore reads all ${gpuPlan.manifest.memoryUsedMiB} MiB of it at once on the target`, {
      hint: 'migrate without --postcopy',
    });
  }
  const host = await hostFacts();
  await execa(criu.path, ['cpuinfo', 'dump', '-D', work, '-o', join(work, 'cpuinfo.log')]);
  // Is a locked file on storage the target sees too? A probe beside it here, looked for there.
  const probes = await placeProbes(facts.locks.map((l) => l.path));
  let target: TargetFacts;
  try {
    target = await runPreflight(session, fp, args.targetDir, await readFile(join(work, 'cpuinfo.img')), {
      paths: fp.paths.map(dest),
      sized: cands.filter((x) => x.kind === 'file' && remapPath(x.path, maps) !== undefined).map((x) => ({ path: dest(x.path), size: x.size })),
      lazy: !!args.postcopy,
      probes: probes.map((x) => ({ path: dest(x.probe), token: x.token })),
      ptys: facts.ptys,
    });
  } finally {
    await removeProbes(probes);
  }
  const sharedThere = new Set(target.sharedProbes);
  const sharedFiles = new Set(probes.filter((x) => sharedThere.has(dest(x.probe))).map((x) => x.path));
  const missing = new Set(target.missingPaths);
  const plan = planShipping(cands.filter((x) => missing.has(dest(x.path))), policy);
  const conns: Connection[] = facts.tcp.filter((t) => t.state === 'ESTABLISHED').map((t) => ({ ino: t.inode, local: t.local, remote: t.remote }));
  const tcpPlan = decideConnections(conns, {
    mode: args.tcp, addresses: target.addresses && new Set(target.addresses), moving: true, where: `on ${args.to}`, hook: !!args.hook,
  });
  const pageSize = Number((await execa('getconf', ['PAGESIZE'], { reject: false })).stdout) || undefined;
  judgePreflight(target, {
    target: args.to, arch: host.arch, pageSize, localCriu: criu.version, footprint: fp, tcpEstablished: tcpPlan.keep.length > 0,
    shipping: plan.ship.map((x) => dest(x.path)), listening, lazy: !!args.postcopy,
  });
  decisions.notes.push(...judgeSharedLocks(facts.locks, sharedFiles, args.to));
  decisions.notes.push(...tcpPlan.notes, ...shippingNotes({ ship: plan.ship, left: [] }));
  let gpu: Prepared['gpu'];
  if (gpuPlan) {
    report.phase(`checking the GPUs on ${args.to}`);
    const there = await remoteGpuHost(session, args.cudaCheckpoint);
    const r = planGpuRestore(gpuPlan.manifest, there, `on ${args.to}`);
    decisions.notes.push(...r.notes, `GPU memory cannot be pre-copied: ${gpuPlan.manifest.memoryUsedMiB} MiB of it move while the tree is frozen`);
    gpu = { plan: gpuPlan, target: new CudaCheckpoint(there.cudaCheckpoint!, sshExec(session)), deviceMap: r.deviceMap };
  }
  if (plan.ship.length > 0) report.phase(`will ship to ${args.to}: ${plan.ship.slice(0, 3).map(describeShipped).join(', ')}${plan.ship.length > 3 ? ` and ${plan.ship.length - 3} more` : ''}`);
  let linkBytesPerSec: number | undefined;
  if (args.postcopy) {
    report.phase(`measuring the link to ${args.to}`);
    linkBytesPerSec = await measureThroughput(session);
    const min = args.minThroughput ?? DEFAULT_MIN_THROUGHPUT;
    const mbs = (n: number): string => `${(n / 1e6).toFixed(0)} MB/s`;
    if (linkBytesPerSec < min) {
      throw new CedanaError('LINK_TOO_SLOW', `post-copy refused: the link to ${args.to} carries ${mbs(linkBytesPerSec)}, less than ${mbs(min)}`, {
        hint: 'migrate without --postcopy (the source then stays safe until the target runs), or lower --min-throughput',
        details: { linkBytesPerSec: Math.round(linkBytesPerSec), minBytesPerSec: min },
      });
    }
    decisions.notes.push(
      `post-copy: the link carries ${mbs(linkBytesPerSec)}; ~${(fp.dumpBytes / 1048576).toFixed(0)} MiB follow the tree after it starts on ${args.to} (~${(fp.dumpBytes / linkBytesPerSec).toFixed(1)} s) — if the link breaks then, the process is lost`,
    );
  }
  // --tcp-close: CRIU's own (reads see EOF). Decided per connection: those sockets are rewritten as
  // unconnected ones (reads fail with ENOTCONN, as after a reset).
  const closeAll = args.tcp === 'close';
  return {
    ...c,
    host,
    facts,
    decisions,
    rssBytes: fp.rssBytes,
    dumpBytes: fp.dumpBytes,
    maps,
    ports,
    ghost,
    ship: plan.ship,
    restoreFlags: restoreFlagArgs({ ...decisions, tcpEstablished: tcpPlan.keep.length > 0, tcpClose: closeAll, externalUnix: decisions.externalUnix.length > 0 }),
    targetLock: target.networkLock ?? 'iptables',
    closeSome: closeAll ? new Set<number>() : new Set(tcpPlan.close.map((x) => x.ino)),
    resetAfter: (await sameNetns(args.pid)) ? (closeAll ? conns : tcpPlan.close) : [],
    linkBytesPerSec,
    gpu,
  };
}

/** Whether the process is in cedana's own network namespace (whose addresses cedana can speak from). */
export async function sameNetns(pid: number): Promise<boolean> {
  const [mine, its] = await Promise.all([readlink('/proc/self/ns/net').catch(() => 'self'), readlink(`/proc/${pid}/ns/net`).catch(() => 'its')]);
  return mine === its;
}

/** The tree's listening TCP sockets as they will be on the target; a --map-port for a port it does not listen on is refused. */
export function checkPortMaps(tcp: TcpSocket[], ports: PortMap[]): { addr: string; port: number }[] {
  const listening = tcp.filter((t) => t.state === 'LISTEN').map((t) => ({ addr: addressOf(t.local), port: Number(/:(\d+)$/.exec(t.local)?.[1] ?? 0) }));
  const unused = ports.filter((m) => !listening.some((l) => l.port === m.from));
  if (unused.length > 0) {
    throw new CedanaError('REMAP_INVALID', `--map-port: the tree has no listening TCP socket on port ${unused.map((p) => p.from).join(', ')}`, {
      hint: 'map a port the process listens on (ss -ltnp shows them)',
    });
  }
  return listening.map((l) => ({ ...l, port: ports.find((m) => m.from === l.port)?.to ?? l.port }));
}
