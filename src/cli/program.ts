/** Commander wiring: parses arguments into handler calls. Handlers return results; main renders. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { CedanaError } from '../errors.js';
import { parsePathMap, parsePortMap, type PathMap, type PortMap } from '../image/remap-args.js';
import { CEDANA_VERSION } from '../version.js';
import type { CommandResult } from './render.js';
import type { Reporter } from './reporter.js';

export interface Invocation {
  command: string;
  json: boolean;
  /** Emits progress events as JSON on stderr with --json. */
  events?: boolean;
  run: (ctx: RunContext) => Promise<CommandResult>;
}

export interface RunContext {
  reporter: Reporter;
  /** Aborted by SIGINT or SIGTERM. */
  signal: AbortSignal;
}

function parsePid(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a positive integer PID');
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer PID');
  return n;
}

function collectPathMap(value: string, previous: PathMap[]): PathMap[] {
  try {
    return [...previous, parsePathMap(value)];
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

function collectPortMap(value: string, previous: PortMap[]): PortMap[] {
  try {
    return [...previous, parsePortMap(value)];
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/** --ship-files / --no-ship-files: every file, none, or (neither) those under the size limits. */
const shipOptions = (cmd: Command): Command =>
  cmd
    .addOption(new Option('--ship-files', 'carry every file the process uses that may be missing where it is restored, whatever its size').conflicts('noShipFiles'))
    .addOption(new Option('--no-ship-files', 'carry no file with the image (default: files up to 64 MiB each, 256 MiB in all)'));

const shipPolicy = (o: { shipFiles?: boolean }): 'auto' | 'all' | 'none' => (o.shipFiles === true ? 'all' : o.shipFiles === false ? 'none' : 'auto');

function parseMBps(value: string): number {
  if (!/^\d+(\.\d+)?$/.test(value)) throw new InvalidArgumentError('expected megabytes per second');
  return Number(value) * 1e6;
}

function parseCount(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError('expected a positive integer');
  return Number(value);
}

/** A duration: 90s, 10m, 1h, 500ms (bare numbers are seconds). */
function parseDuration(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('expected a duration like 90s, 10m or 1h');
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']);
}

function parseMs(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected milliseconds');
  return Number(value);
}

/** What is wrong with a process-tree command line (no PID, or container-only options), if anything. */
function treeMisuse(command: string, pid: number | undefined, o: { runtime?: string; rootfs?: boolean }, hint: string): CedanaError | undefined {
  if (pid === undefined) return new CedanaError('USAGE', `${command} needs a PID, or --container ID`, { hint });
  if (o.runtime !== undefined || o.rootfs) return new CedanaError('USAGE', '--runtime and --rootfs go with --container');
  return undefined;
}

/** --cuda-checkpoint PATH: where NVIDIA's cuda-checkpoint is (else on PATH). */
const cudaOption = (cmd: Command): Command => cmd.option('--cuda-checkpoint <path>', "NVIDIA's cuda-checkpoint, for processes that use the GPU (default: found on PATH; nvidia-smi on PATH or beside it)");

/** Builds the program; `onInvoke` receives the chosen command, to run outside commander. */
export function buildProgram(onInvoke: (inv: Invocation) => void): Command {
  /** A command line that parsed but does not make sense: reported like any other error. */
  const refuse = (command: string, json: boolean, err: CedanaError): void =>
    onInvoke({ command, json, run: async () => { throw err; } });

  const program = new Command('cedana')
    .description('Checkpoint, restore and migrate running Linux processes with CRIU')
    .version(CEDANA_VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .exitOverride();

  cudaOption(program
    .command('check'))
    .description('can this host dump and restore? (root, CRIU >= 4.2, criu check, optional features)')
    .option('--json', 'print one JSON object on stdout')
    .action((o: { json?: boolean; cudaCheckpoint?: string }) => {
      onInvoke({ command: 'check', json: !!o.json, run: async () => (await import('../commands/check.js')).check({ cudaCheckpoint: o.cudaCheckpoint }) });
    });

  cudaOption(shipOptions(program
    .command('dump')))
    .description('checkpoint the process tree rooted at <pid>, or a container (--container ID)')
    // <pid> is required unless --container names what to dump: commander can only call it optional.
    .usage('<pid> [options]\n       cedana dump --container <id> [options]')
    .argument('[pid]', 'root of the process tree (required unless --container)', parsePid)
    .option('--container <id>', 'checkpoint this container (runc or crun) instead of a process tree')
    .option('--runtime <name>', 'with --container: runc or crun (default: the one that has the container)')
    .option('--rootfs', "with --container: carry the container's root file system in the image (restores where it is missing)")
    .option('--format <format>', "with --container: cedana (its image; default) or checkpointctl (the archive layout of Kubernetes, CRI-O and Podman: `podman container restore --import` and checkpointctl read it)")
    .option('--base-image <name>', 'with --format checkpointctl: the image the container runs over (its id from Podman here), which Podman restores it over')
    .option('--base-image-id <id>', 'with --base-image: that image\'s id (64 hex digits), where Podman is not here to tell it')
    .option('-o, --output <path>', 'image directory, archive (.tar, .tar.gz, .tar.zst) or - for a tar stream on stdout (default ./cedana-<pid>-<UTC time>)')
    .option('--leave-running', 'keep the process running after the dump')
    .addOption(new Option('--tcp-established', 'keep established TCP connections (default when the tree has some)').conflicts('tcpClose'))
    .addOption(new Option('--tcp-close', 'restore established TCP connections closed').conflicts('tcpEstablished'))
    .option('--file-locks', 'dump file locks (automatic when the tree holds some)')
    .option('--force', 'replace an existing output')
    .option('--parent <dir>', 'incremental checkpoint: store only the pages that changed since this earlier checkpoint of the process (a directory; the output must be one too)')
    .option('--every <interval>', 'checkpoint periodically (90s, 10m, 1h) into the directory -o, the process left running, each one incremental to the one before; ends when the process does, or on Ctrl-C')
    .option('--keep <n>', 'with --every: keep the newest n checkpoints restorable (default 5); every n-th is a full one', parseCount, 5)
    .option('--gpu-lock-timeout <ms>', 'how long cuda-checkpoint may wait to lock a CUDA process (its running kernels finish first); default 10000', parseMs)
    .option('--json', 'print one JSON object (on stderr when the image goes to stdout)')
    .action((pidArg: number | undefined, o: { output?: string; parent?: string; every?: string; keep: number; leaveRunning?: boolean; tcpEstablished?: boolean; tcpClose?: boolean; fileLocks?: boolean; force?: boolean; shipFiles?: boolean; cudaCheckpoint?: string; gpuLockTimeout?: number; container?: string; runtime?: string; rootfs?: boolean; format?: string; baseImage?: string; baseImageId?: string; json?: boolean }) => {
      if (o.container === undefined && (o.format !== undefined || o.baseImage !== undefined || o.baseImageId !== undefined)) {
        return refuse('dump', !!o.json, new CedanaError('USAGE', '--format, --base-image and --base-image-id go with --container', { hint: 'cedana dump --container ID --format checkpointctl --base-image NAME -o ck.tar.zst' }));
      }
      if (o.container !== undefined) {
        onInvoke({
          command: 'dump',
          json: !!o.json,
          run: async (ctx) => {
            if (pidArg !== undefined) throw new CedanaError('USAGE', 'give a PID or --container, not both');
            if (o.every || o.parent) throw new CedanaError('USAGE', '--every and --parent are for process trees, not containers');
            const { parseFormat, resolveBaseImage } = await import('../container/archive-export.js');
            const format = parseFormat(o.format);
            if (format !== 'checkpointctl' && (o.baseImage || o.baseImageId)) throw new CedanaError('USAGE', '--base-image goes with --format checkpointctl');
            const baseImage = await resolveBaseImage(o.baseImage, o.baseImageId);
            return (await import('../commands/container.js')).dumpContainer({
              format, baseImage,
              id: o.container!, runtime: o.runtime, output: o.output, leaveRunning: !!o.leaveRunning, tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto',
              fileLocks: !!o.fileLocks, force: !!o.force, rootfs: !!o.rootfs,
              stream: o.output === '-' ? (await import('./stdout.js')).imageStdout() : undefined, reporter: ctx.reporter, signal: ctx.signal,
            });
          },
        });
        return;
      }
      const misuse = treeMisuse('dump', pidArg, o, 'cedana dump 1234, or cedana dump --container web');
      if (misuse) return refuse('dump', !!o.json, misuse);
      const pid = pidArg!;
      if (o.every !== undefined) {
        onInvoke({
          command: 'dump',
          json: !!o.json,
          events: true,
          run: async (ctx) => {
            const { dumpEvery, parseInterval } = await import('../commands/dump-every.js');
            if (!o.output || o.output === '-') throw new CedanaError('USAGE', '--every needs -o DIR, the directory the checkpoints go to', { hint: 'e.g. cedana dump 1234 --every 10m --keep 5 -o /var/lib/ckpt/job' });
            if (o.parent) throw new CedanaError('USAGE', '--every makes its own chain: --parent does not go with it');
            return dumpEvery({
              pid, output: o.output, everyMs: parseInterval(o.every!), keep: o.keep, tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto',
              fileLocks: !!o.fileLocks, ship: shipPolicy(o), reporter: ctx.reporter, signal: ctx.signal, cudaCheckpoint: o.cudaCheckpoint, gpuLockTimeoutMs: o.gpuLockTimeout,
            });
          },
        });
        return;
      }
      onInvoke({
        command: 'dump',
        json: !!o.json,
        run: async (ctx) =>
          (await import('../commands/dump.js')).dump({
            pid,
            output: o.output,
            leaveRunning: !!o.leaveRunning,
            tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto',
            fileLocks: !!o.fileLocks,
            force: !!o.force,
            ship: shipPolicy(o),
            parent: o.parent,
            stream: o.output === '-' ? (await import('./stdout.js')).imageStdout() : undefined,
            reporter: ctx.reporter,
            signal: ctx.signal,
            cudaCheckpoint: o.cudaCheckpoint,
            gpuLockTimeoutMs: o.gpuLockTimeout,
          }),
      });
    });

  cudaOption(program
    .command('restore'))
    .description('restore an image (directory, archive, or - for stdin); the process runs detached')
    .argument('<image>', 'image directory, archive, or - to read a tar stream from stdin')
    .option('--pid-file <file>', 'write the restored root PID to this file')
    .addOption(new Option('--tcp-established', 'keep every established TCP connection; an error if a local address is missing here (default: keep those whose address exists, close the rest)').conflicts('tcpClose'))
    .addOption(new Option('--tcp-close', 'restore every established TCP connection closed').conflicts('tcpEstablished'))
    .option('--pid-wait <ms>', 'how long to wait for the image\'s PIDs to become free', parseMs, 5000)
    .option('--map-path <OLD=NEW>', 'restore files under OLD (open, mapped, working directory) from NEW; repeatable', collectPathMap, [] as PathMap[])
    .option('--map-port <OLD:NEW>', 'a TCP socket listening on port OLD listens on NEW after the restore; repeatable', collectPortMap, [] as PortMap[])
    .option('--allow-lost-locks', 'run the restored tree even if CRIU did not take all of its file locks again (by default that fails the restore)')
    .option('--container [new-id]', "restore a container's image as a container (its own id, or NEW-ID)")
    .option('--runtime <name>', 'with --container: runc or crun (default: the one that made it, if installed)')
    .option('--rootfs <dir>', "with --container, for a Kubernetes/CRI-O/Podman checkpoint archive: the container image's root file system here (the archive carries only its changes)")
    .option('--json', 'print one JSON object on stdout')
    .action((image: string, o: { pidFile?: string; tcpEstablished?: boolean; tcpClose?: boolean; pidWait: number; mapPath: PathMap[]; mapPort: PortMap[]; allowLostLocks?: boolean; cudaCheckpoint?: string; container?: string | boolean; runtime?: string; rootfs?: string; json?: boolean }) => {
      if (o.rootfs !== undefined && o.container === undefined) {
        return refuse('restore', !!o.json, new CedanaError('USAGE', '--rootfs goes with --container (a container checkpoint archive)', { hint: 'cedana restore ARCHIVE --container [NEW-ID] --rootfs DIR' }));
      }
      if (o.container !== undefined) {
        onInvoke({
          command: 'restore',
          json: !!o.json,
          run: async (ctx) =>
            (await import('../commands/container.js')).restoreContainer({ image, id: typeof o.container === 'string' ? o.container : undefined, runtime: o.runtime, rootfs: o.rootfs, reporter: ctx.reporter }),
        });
        return;
      }
      onInvoke({
        command: 'restore',
        json: !!o.json,
        run: async (ctx) => {
          if (ctx.signal.aborted) throw new CedanaError('INTERRUPTED', 'restore interrupted before it began');
          return (await import('../commands/restore.js')).restore({
            image,
            pidFile: o.pidFile,
            tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto',
            pidWaitMs: o.pidWait,
            mapPaths: o.mapPath,
            mapPorts: o.mapPort,
            allowLostLocks: !!o.allowLostLocks,
            cudaCheckpoint: o.cudaCheckpoint,
            reporter: ctx.reporter,
            signal: ctx.signal,
          });
        },
      });
    });

  program
    .command('inspect')
    .description('show what an image holds: processes, memory, open files, sockets, provenance, sizes, checksums (needs no root)')
    .argument('<image>', 'image directory, archive, or - to read a tar stream from stdin')
    .option('--json', 'print one JSON object on stdout')
    .action((image: string, o: { json?: boolean }) => {
      onInvoke({
        command: 'inspect',
        json: !!o.json,
        run: async (ctx) => (await import('../commands/inspect.js')).inspect({ image, reporter: ctx.reporter }),
      });
    });

  program
    .command('image')
    .description('container checkpoints as OCI images, for Podman, CRI-O and containerd')
    .command('build')
    .description('make an OCI checkpoint image (an oci-archive) from a container checkpoint archive of Podman, CRI-O, the kubelet or cedana; push it with skopeo or podman')
    .argument('<archive>', 'checkpoint archive (.tar, .tar.gz, .tar.zst) or its directory, in the layout checkpointctl reads')
    .requiredOption('-o, --output <file>', 'required: the oci-archive to write, e.g. checkpoint.oci.tar')
    .option('--tag <name>', 'the image\'s name, e.g. registry.example.com/app-checkpoint:v1 (what podman load calls it)')
    .option('--force', 'replace an existing output')
    .option('--json', 'print one JSON object on stdout')
    .action((archive: string, o: { output: string; tag?: string; force?: boolean; json?: boolean }) => {
      onInvoke({
        command: 'image build',
        json: !!o.json,
        run: async (ctx) => (await import('../commands/image.js')).imageBuild({ archive, output: o.output, tag: o.tag, force: !!o.force, reporter: ctx.reporter, signal: ctx.signal }),
      });
    });

  cudaOption(shipOptions(program
    .command('migrate')))
    .description('move the process tree rooted at <pid>, or a container (--container ID), to another host over SSH; the source is resumed on any failure')
    .usage('<pid> --to <destination> [options]\n       cedana migrate --container <id> --to <destination> [options]')
    .argument('[pid]', 'root of the process tree (required unless --container)', parsePid)
    .option('--container <id>', 'move this container (runc or crun) instead of a process tree')
    .option('--runtime <name>', 'with --container: runc or crun (default: the one that has the container)')
    .option('--rootfs', "with --container: send the container's root file system when the target lacks it")
    .requiredOption('--to <destination>', 'required: [user@]host[:port], or a Host alias from ~/.ssh/config')
    .option('--accept-new-host-key', 'record the key of a host not yet in known_hosts (a changed key is always refused)')
    .option('--target-dir <dir>', 'where the target keeps the image while it restores', '/var/tmp')
    .addOption(new Option('--tcp-established', 'keep every established TCP connection; an error before freezing if a local address is missing on the target (default: keep those whose address exists there, close the rest)').conflicts('tcpClose'))
    .addOption(new Option('--tcp-close', 'restore every established TCP connection closed').conflicts('tcpEstablished'))
    .option('--file-locks', 'migrate file locks (automatic when the tree holds some)')
    .option('--map-path <OLD=NEW>', 'on the target, files under OLD (open, mapped, working directory) are used from NEW; repeatable', collectPathMap, [] as PathMap[])
    .option('--map-port <OLD:NEW>', 'a TCP socket listening on port OLD listens on NEW on the target; repeatable', collectPortMap, [] as PortMap[])
    .addOption(new Option('--precopy', 'pre-copy: rounds of memory sent while the tree runs, then only what changed while frozen (default where the kernel tracks dirty pages, with CRIU\'s rounds; where it does not, as on arm64, cedana compares page contents)'))
    .addOption(new Option('--no-precopy', 'never pre-copy (stop-and-copy)'))
    .addOption(new Option('--precopy-by <how>', 'pre-copy: what finds the pages that changed: soft-dirty (the kernel\'s tracking, CRIU\'s rounds), content (cedana compares page hashes: any kernel), auto (soft-dirty where the kernel has it)').choices(['auto', 'soft-dirty', 'content']).default('auto'))
    .option('--max-rounds <n>', 'pre-copy: at most this many rounds (default 8)', parseCount)
    .addOption(new Option('--transport <client>', 'what carries the memory: openssh (the system\'s ssh -W, one connection pinned to the host key cedana verified), ssh2 (built in), auto: OpenSSH where it is installed and connects, else ssh2').choices(['auto', 'openssh', 'ssh2']).default('auto'))
    .option('--postcopy', 'post-copy: the tree runs on the target at once and its memory follows on demand (CRIU lazy pages). The source is ended as soon as the target runs: if the link breaks after that, the process is LOST. Refused on a link slower than --min-throughput')
    .option('--min-throughput <MB/s>', 'post-copy is refused on a link measured slower than this (default 50)', parseMBps)
    .option('--gpu-lock-timeout <ms>', 'how long cuda-checkpoint may wait to lock a CUDA process; default 10000', parseMs)
    .option('--allow-lost-locks', 'move a tree even if CRIU will not take all of its file locks again there (by default refused before freezing when predicted, and rolled back when found)')
    .option('--freeze-timeout <duration>', 'the longest the source may stay frozen (90s, 5m); past it the migration is abandoned, the source resumed and the target cleaned (default: 60s + 20s per GiB of memory)', parseDuration)
    .option('--hook <command>', 'run with sh -c here with CEDANA_HOOK=pre-restore (source frozen, before the target restores), post-restore (target running, before the source ends) and, on failure, rollback: e.g. to move a floating IP address')
    .option('--json', 'progress as JSON events on stderr, one JSON result on stdout')
    .action((pidArg: number | undefined, o: { to: string; acceptNewHostKey?: boolean; targetDir: string; tcpEstablished?: boolean; tcpClose?: boolean; fileLocks?: boolean; mapPath: PathMap[]; mapPort: PortMap[]; shipFiles?: boolean; precopy?: boolean; precopyBy: 'auto' | 'soft-dirty' | 'content'; maxRounds?: number; transport: 'auto' | 'openssh' | 'ssh2'; postcopy?: boolean; minThroughput?: number; hook?: string; freezeTimeout?: number; allowLostLocks?: boolean; cudaCheckpoint?: string; gpuLockTimeout?: number; container?: string; runtime?: string; rootfs?: boolean; format?: string; baseImage?: string; baseImageId?: string; json?: boolean }) => {
      if (o.container === undefined && (o.format !== undefined || o.baseImage !== undefined || o.baseImageId !== undefined)) {
        return refuse('dump', !!o.json, new CedanaError('USAGE', '--format, --base-image and --base-image-id go with --container', { hint: 'cedana dump --container ID --format checkpointctl --base-image NAME -o ck.tar.zst' }));
      }
      if (o.container !== undefined) {
        onInvoke({
          command: 'migrate',
          json: !!o.json,
          events: true,
          run: async (ctx) => {
            if (pidArg !== undefined) throw new CedanaError('USAGE', 'give a PID or --container, not both');
            if (o.postcopy || o.precopy || o.mapPath.length || o.mapPort.length || o.hook) throw new CedanaError('USAGE', '--postcopy, --precopy, --map-path, --map-port and --hook are for process trees; a container moves stop-and-copy');
            return (await import('../commands/container.js')).migrateContainer({
              id: o.container!, runtime: o.runtime, to: o.to, acceptNewHostKey: !!o.acceptNewHostKey, targetDir: o.targetDir,
              tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto', fileLocks: !!o.fileLocks, rootfs: !!o.rootfs, reporter: ctx.reporter, signal: ctx.signal,
              freezeTimeoutMs: o.freezeTimeout,
            });
          },
        });
        return;
      }
      const misuse = treeMisuse('migrate', pidArg, o, 'cedana migrate 1234 --to host, or cedana migrate --container web --to host');
      if (misuse) return refuse('migrate', !!o.json, misuse);
      const pid = pidArg!;
      onInvoke({
        command: 'migrate',
        json: !!o.json,
        events: true,
        run: async (ctx) =>
          (await import('../commands/migrate.js')).migrate({
            pid,
            to: o.to,
            acceptNewHostKey: !!o.acceptNewHostKey,
            targetDir: o.targetDir,
            tcp: o.tcpEstablished ? 'established' : o.tcpClose ? 'close' : 'auto',
            fileLocks: !!o.fileLocks,
            mapPaths: o.mapPath,
            mapPorts: o.mapPort,
            ship: shipPolicy(o),
            postcopy: !!o.postcopy,
            precopy: o.precopy,
            precopyBy: o.precopyBy,
            maxRounds: o.maxRounds,
            transport: o.transport,
            minThroughput: o.minThroughput,
            hook: o.hook,
            freezeTimeoutMs: o.freezeTimeout,
            allowLostLocks: !!o.allowLostLocks,
            cudaCheckpoint: o.cudaCheckpoint,
            gpuLockTimeoutMs: o.gpuLockTimeout,
            reporter: ctx.reporter,
            signal: ctx.signal,
          }),
      });
    });

  return program;
}
