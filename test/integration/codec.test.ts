/**
 * The CRIU image codec on images the real CRIU wrote: every image file of every dump round-trips
 * byte for byte, what is decoded matches what the test knows about the dumped processes, and —
 * with CRIU's own crit — matches crit's decoding value for value.
 */
import protobuf from 'protobufjs';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeImage, encodeImage, type DecodedImage, type MessageEntry } from '../../src/image/criu/codec.js';
import { PAGE_SIZE, PE_PRESENT } from '../../src/image/criu/kinds.js';
import type { Message } from '../../src/image/criu/message.js';
import { root } from '../../src/image/criu/schema/protobuf.js';
import { cedanaOk } from '../helpers/cedana.js';
import { critDecode, diffImage, hasCrit, pycriuSchema } from '../helpers/crit.js';
import { Owned, readText, waitFor } from '../helpers/processes.js';

const owned = new Owned();
afterAll(() => owned.cleanup());

interface Dump {
  dir: string;
  /** Every image file but the raw memory (pages-*.img), decoded. */
  images: Map<string, { buf: Buffer; img: DecodedImage }>;
}

const dumps: Record<string, Dump> = {};
const facts = { counterPid: 0, treeParent: 0, treeChild: 0, appenderLog: '', tcpClientPort: 0, zooDir: '' };
const TCP_PORT = 7000 + (process.pid % 500) * 2;

function load(dir: string): Dump {
  const images = new Map<string, { buf: Buffer; img: DecodedImage }>();
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith('.img') || name.startsWith('pages-')) continue;
    const buf = readFileSync(join(dir, name));
    images.set(name, { buf, img: decodeImage(buf, name) });
  }
  return { dir, images };
}

async function netns(): Promise<string[]> {
  return (await owned.netns(`c${Object.keys(dumps).length}-`)).inNs;
}

const fields = (p: string): number[] | undefined => readText(p)?.trim().split(/\s+/).map(Number);

beforeAll(async () => {
  const counter = await owned.counter();
  facts.counterPid = counter.pid;
  await cedanaOk(['dump', String(counter.pid), '-o', join(counter.dir, 'img')]);
  dumps.counter = load(join(counter.dir, 'img'));

  const d1 = await owned.tempDir();
  facts.appenderLog = join(d1, 'out.log');
  const appender = owned.python('appender.py', [facts.appenderLog]);
  await waitFor('appender lines', () => (readText(facts.appenderLog)?.split('\n').length ?? 0) > 5);
  await cedanaOk(['dump', String(appender), '-o', join(d1, 'img')]);
  dumps.appender = load(join(d1, 'img'));

  const d2 = await owned.tempDir();
  const tree = owned.python('pipetree.py', [join(d2, 'state')]);
  const [, child] = await waitFor('pipe tree to talk', () => {
    const f = fields(join(d2, 'state'));
    return f && f[2]! >= 3 ? f : undefined;
  });
  [facts.treeParent, facts.treeChild] = [tree, child!];
  await cedanaOk(['dump', String(tree), '-o', join(d2, 'img')]);
  dumps.pipetree = load(join(d2, 'img'));

  const d3 = await owned.tempDir();
  const inNs = await netns();
  const pair = owned.python('tcppair.py', [join(d3, 'state'), String(TCP_PORT)], { wrap: inNs });
  const [, , port] = await waitFor('tcp exchange', () => {
    const f = fields(join(d3, 'state'));
    return f && f[0]! > 3 ? f : undefined;
  });
  facts.tcpClientPort = port!;
  await cedanaOk(['dump', String(pair), '-o', join(d3, 'img')], { wrap: inNs });
  dumps.tcppair = load(join(d3, 'img'));

  facts.zooDir = await owned.tempDir();
  const inNs2 = await netns();
  const zoo = owned.python('fdzoo.py', [facts.zooDir, String(TCP_PORT)], { wrap: inNs2 });
  await waitFor('fd zoo ready', () => readText(join(facts.zooDir, 'state')));
  await cedanaOk(['dump', String(zoo), '-o', join(facts.zooDir, 'img')], { wrap: inNs2 });
  dumps.fdzoo = load(join(facts.zooDir, 'img'));
}, 120_000);

const dumpCount = (): number => Object.keys(dumps).length;
const image = (dump: string, name: string): DecodedImage => {
  const i = dumps[dump]!.images.get(name);
  if (!i) throw new Error(`${dump} has no ${name}: ${[...dumps[dump]!.images.keys()].join(' ')}`);
  return i.img;
};
const values = (img: DecodedImage): Message[] => img.entries.map((e) => (e as MessageEntry).value);
const filesOf = (dump: string, type: string): Message[] => values(image(dump, 'files.img')).filter((f) => f.type === type);
const extra = (img: DecodedImage, i = 0): string => (img.entries[i] as MessageEntry).extra!.toString();

describe('CRIU image codec on real dumps', () => {
  it('round-trips every image file byte for byte, and re-encodes every entry exactly from its value', () => {
    const kinds = new Set<string>();
    let files = 0;
    for (const [dump, { images }] of Object.entries(dumps)) {
      for (const [name, { buf, img }] of images) {
        files++;
        kinds.add(img.kind);
        expect(encodeImage(img).equals(buf), `${dump}/${name}`).toBe(true);
        // Fresh entry objects carry no original bytes: the schema alone must reproduce CRIU's encoding.
        const fresh = encodeImage({ ...img, entries: img.entries.map((e) => ({ ...e })) });
        expect(fresh.equals(buf), `${dump}/${name} from its values`).toBe(true);
        expect(img.kind, `${dump}/${name}`).not.toMatch(/UNKNOWN|RAW/);
      }
    }
    console.log(`round-tripped ${files} image files of ${dumpCount()} dumps, ${kinds.size} kinds: ${[...kinds].sort().join(' ')}`);
    expect(files).toBeGreaterThan(60);
    for (const k of ['INVENTORY', 'PSTREE', 'CORE', 'IDS', 'FS', 'MM', 'PAGEMAP', 'FDINFO', 'FILES', 'SECCOMP', 'TIMENS', 'PIPES_DATA',
      'FIFO_DATA', 'SK_QUEUES', 'TCP_STREAM', 'GHOST_FILE', 'REMAP_FPATH', 'MEMFD_INODE', 'FILE_LOCKS']) expect(kinds).toContain(k);
  });

  it('decodes the process tree, the command and the task state', () => {
    const tree = values(image('pipetree', 'pstree.img'));
    expect(tree.map((p) => p.pid)).toEqual([facts.treeParent, facts.treeChild]);
    expect(tree[1]).toMatchObject({ ppid: facts.treeParent, threads: [facts.treeChild] });
    for (const pid of [facts.treeParent, facts.treeChild]) {
      const core = values(image('pipetree', `core-${pid}.img`))[0]!;
      expect(core).toMatchObject({ mtype: 'X86_64', tc: { comm: 'python3', task_state: 1 } });
    }
    expect(values(image('counter', 'pstree.img'))).toEqual([expect.objectContaining({ pid: facts.counterPid, ppid: 0 })]);
    const ids = values(image('counter', `ids-${facts.counterPid}.img`))[0]!;
    const mm = values(image('counter', `mm-${facts.counterPid}.img`))[0]!;
    const exe = values(image('counter', 'files.img')).find((f) => f.id === mm.exe_file_id);
    expect((exe?.reg as Message).name).toMatch(/python3/);
    expect((mm.vmas as Message[]).length).toBeGreaterThan(10);
    expect(ids.files_id).toBeGreaterThan(0);
  });

  it('the memory the pagemaps announce is exactly the size of their pages files', () => {
    let checked = 0;
    for (const [dump, { dir, images }] of Object.entries(dumps)) {
      const bytes = new Map<number, number>();
      for (const [name, { img }] of images) {
        if (!name.startsWith('pagemap-')) continue;
        const [head, ...entries] = values(img);
        let sum = 0;
        for (const e of entries) if (((e.flags as number) & PE_PRESENT) !== 0) sum += Number(e.nr_pages) * PAGE_SIZE;
        bytes.set(head!.pages_id as number, (bytes.get(head!.pages_id as number) ?? 0) + sum);
      }
      for (const [id, sum] of bytes) {
        expect(sum, `${dump}/pages-${id}.img`).toBe(statSync(join(dir, `pages-${id}.img`)).size);
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(6);
  });

  it('decodes open files: the path and offset of a written file, pipes, sockets and their data', () => {
    const log = filesOf('appender', 'REG').find((f) => (f.reg as Message).name === facts.appenderLog);
    expect(log?.reg).toMatchObject({ flags: expect.any(Number) });
    expect((log!.reg as Message).pos).toBeGreaterThan(0n);

    const zoo = facts.zooDir;
    expect(filesOf('fdzoo', 'REG').find((f) => (f.reg as Message).name === join(zoo, 'out.log'))?.reg).toMatchObject({ pos: 24n });
    expect(filesOf('fdzoo', 'PIPE').length).toBeGreaterThan(0);
    expect(extra(image('fdzoo', 'pipes-data.img'))).toBe('pipe data\n');
    expect(extra(image('fdzoo', 'fifo-data.img'))).toBe('fifo data\n');
    const queues = image('fdzoo', 'sk-queues.img');
    expect(queues.entries.map((_, i) => extra(queues, i)).sort()).toEqual(['datagram one', 'datagram two', 'queued on a unix socket\n']);
    const listening = filesOf('fdzoo', 'UNIXSK').map((f) => f.usk as Message).find((u) => u.state === 10);
    expect((listening!.name as Buffer).toString()).toBe(`${join(zoo, 'sock')}\0`);
    const ghost = [...dumps.fdzoo!.images.keys()].find((n) => n.startsWith('ghost-file-'))!;
    expect(extra(image('fdzoo', ghost))).toBe('contents of a deleted file\n');
    expect(values(image('fdzoo', 'memfd.img'))[0]).toMatchObject({ name: 'fdzoo', size: 15n });
    for (const t of ['EVENTFD', 'EVENTPOLL', 'TIMERFD', 'INOTIFY', 'MEMFD', 'FIFO']) expect(filesOf('fdzoo', t).length, t).toBeGreaterThan(0);
  });

  it('decodes TCP sockets: ports, addresses and the queued bytes', () => {
    const tcp = filesOf('tcppair', 'INETSK').map((f) => f.isk as Message).filter((s) => s.proto === 6);
    const lo = 0x0100007f; // 127.0.0.1 in network byte order
    expect(tcp.map((s) => [s.src_port, s.dst_port]).sort()).toEqual([[TCP_PORT, facts.tcpClientPort], [facts.tcpClientPort, TCP_PORT]].sort());
    for (const s of tcp) expect(s).toMatchObject({ family: 2, type: 1, state: 1, src_addr: [lo], dst_addr: [lo] });
    const streams = [...dumps.tcppair!.images.keys()].filter((n) => n.startsWith('tcp-stream-'));
    expect(streams.length).toBe(2);
    const queued = [...dumps.fdzoo!.images.keys()].filter((n) => n.startsWith('tcp-stream-')).map((n) => image('fdzoo', n));
    expect(queued.map((s) => extra(s)).sort()).toEqual(['', 'unread tcp bytes\n']);
  });

  describe.runIf(hasCrit())("against CRIU's crit", () => {
    it('decodes every image file as crit does', async () => {
      const files = Object.entries(dumps).flatMap(([dump, { dir, images }]) => [...images].map(([name, { img }]) => ({ dump, path: join(dir, name), name, img })));
      const differences: string[] = [];
      for (let i = 0; i < files.length; i += 8) {
        // crit starts a Python each time: eight at a time.
        const batch = files.slice(i, i + 8);
        const crits = await Promise.all(batch.map((f) => critDecode(f.path)));
        batch.forEach((f, j) => differences.push(...diffImage(f.img, crits[j]!).map((d) => `${f.dump}/${f.name}: ${d}`)));
      }
      const compared = files.length;
      expect(differences).toEqual([]);
      expect(compared).toBeGreaterThan(60);
    });

    it('the schema matches the messages crit was built with, field for field', async () => {
      const theirs = await pycriuSchema();
      const diffs: string[] = [];
      let messages = 0;
      const walk = (ns: protobuf.NamespaceBase): void => {
        for (const type of ns.nestedArray) {
          if (!(type instanceof protobuf.Type)) continue;
          messages++;
          const ref = theirs[type.name];
          if (!ref) diffs.push(`${type.name}: not in CRIU`);
          for (const f of type.fieldsArray) {
            const mine = [f.name, f.resolvedType?.name ?? f.type, f.repeated ? 'repeated' : f.required ? 'required' : 'optional'];
            if (JSON.stringify(ref?.[f.id]) !== JSON.stringify(mine)) diffs.push(`${type.name}.${f.id}: ours ${mine}, CRIU's ${ref?.[f.id]}`);
          }
          // Left out on purpose: other architectures' registers and cpuinfo (they stay unknown fields).
          for (const [id, [name]] of Object.entries(ref ?? {})) {
            if (!type.fieldsById[Number(id)] && !/^(ti_|ppc64_entry|s390_entry)/.test(name)) diffs.push(`${type.name}.${id} (${name}): missing`);
          }
          walk(type);
        }
      };
      walk(root);
      expect(diffs).toEqual([]);
      expect(messages).toBeGreaterThan(90);
    });
  });
});
