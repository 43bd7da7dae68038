/**
 * CRIU's own image tool, crit (Debian: python3-pycriu), as an independent check of cedana's image
 * codec: what crit decodes must be what cedana decodes, value for value.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import type { DecodedImage } from '../../src/image/criu/codec.js';

export const hasCrit = (): boolean => ['/usr/bin/crit', '/usr/local/bin/crit'].some((p) => existsSync(p));

/** `crit decode` of one image. Integers of 16 digits or more are kept as strings (JSON numbers would round them). */
export async function critDecode(path: string): Promise<{ magic: string; entries: Record<string, unknown>[] }> {
  const { stdout } = await execa('crit', ['decode', '-i', path]);
  return JSON.parse(stdout.replace(/([:[,]\s*)(-?\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
}

/** crit writes bytes as base64 (with line breaks), unix socket names as quoted-printable. */
function critBytes(s: string): Buffer[] {
  const qp = Buffer.from(s.replace(/=\r?\n/g, '').replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1');
  return [Buffer.from(s.replace(/\s/g, ''), 'base64'), qp];
}

/** Differences between a value cedana decoded and crit's JSON for it (empty: the same). */
export function diffCrit(mine: unknown, crit: unknown, path: string, out: string[] = []): string[] {
  const differ = () => out.push(`${path}: cedana ${show(mine)}, crit ${show(crit)}`);
  if (Array.isArray(crit)) {
    if (!Array.isArray(mine) || mine.length !== crit.length) return differ(), out;
    crit.forEach((c, i) => diffCrit(mine[i], c, `${path}[${i}]`, out));
  } else if (crit !== null && typeof crit === 'object') {
    if (mine === null || typeof mine !== 'object' || Buffer.isBuffer(mine)) return differ(), out;
    const m = mine as Record<string, unknown>;
    const keys = new Set([...Object.keys(crit), ...Object.keys(m)].filter((k) => k !== '$unknown'));
    for (const k of keys) diffCrit(m[k], (crit as Record<string, unknown>)[k], `${path}.${k}`, out);
  } else if (typeof crit === 'string') {
    if (Buffer.isBuffer(mine)) {
      if (!critBytes(crit).some((b) => b.equals(mine))) differ();
    } else if (typeof mine === 'bigint' || typeof mine === 'number') {
      if (!/^-?\d+$/.test(crit) || BigInt(crit) !== BigInt(mine)) differ();
    } else if (mine !== crit) differ();
  } else if (typeof crit === 'number') {
    if ((typeof mine !== 'number' && typeof mine !== 'bigint') || BigInt(mine) !== BigInt(crit)) differ();
  } else if (mine !== crit) differ();
  return out;
}

const show = (v: unknown): string =>
  Buffer.isBuffer(v) ? `<${v.length} bytes>` : typeof v === 'bigint' ? `${v}n` : JSON.stringify(v)?.slice(0, 80) ?? String(v);

/** Differences between a decoded image and crit's decoding of the same file. */
export function diffImage(img: DecodedImage, crit: { magic: string; entries: Record<string, unknown>[] }): string[] {
  const out: string[] = [];
  if (crit.magic !== img.kind) out.push(`kind: cedana ${img.kind}, crit ${crit.magic}`);
  if (crit.entries.length !== img.entries.length) return [...out, `entries: cedana ${img.entries.length}, crit ${crit.entries.length}`];
  img.entries.forEach((e, i) => {
    if (e.type === null) return; // opaque to cedana: nothing to compare
    const { extra, ...value } = crit.entries[i]!;
    diffCrit(e.value, value, `entry ${i}`, out);
    if (extra === undefined) {
      if (e.extra && e.extra.length > 0) out.push(`entry ${i}: cedana has ${e.extra.length} bytes of data, crit none`);
    } else if (typeof extra === 'object' && extra !== null) {
      // tcp-stream: crit splits the data into the receive and the send queue.
      const { inq, outq } = extra as { inq: string; outq: string };
      diffCrit(e.extra, Buffer.concat([critBytes(inq)[0]!, critBytes(outq)[0]!]).toString('base64'), `entry ${i}.extra`, out);
    } else diffCrit(e.extra ?? Buffer.alloc(0), extra, `entry ${i}.extra`, out);
  });
  return out;
}

/**
 * The field tables of the CRIU messages pycriu was built with (CRIU's own images/*.proto):
 * message name → field number → [name, type, label].
 */
export async function pycriuSchema(): Promise<Record<string, Record<string, [string, string, string]>>> {
  const py = `
import json, os, importlib, pycriu.images as I
from google.protobuf import descriptor_pb2
T = {1:'double',2:'float',3:'int64',4:'uint64',5:'int32',6:'fixed64',7:'fixed32',8:'bool',9:'string',12:'bytes',13:'uint32',15:'sfixed32',16:'sfixed64',17:'sint32',18:'sint64'}
L = {1:'optional',2:'required',3:'repeated'}
out = {}
def walk(m):
    out[m.name] = {f.number: [f.name, T.get(f.type) or f.type_name.split('.')[-1], L[f.label]] for f in m.field}
    for n in m.nested_type: walk(n)
d = os.path.dirname(I.__file__)
for fn in sorted(os.listdir(d)):
    if fn.endswith('_pb2.py'):
        fd = descriptor_pb2.FileDescriptorProto()
        importlib.import_module('pycriu.images.' + fn[:-3]).DESCRIPTOR.CopyToProto(fd)
        for m in fd.message_type: walk(m)
print(json.dumps(out))`;
  // crit's own interpreter: the one that has pycriu.
  const { stdout } = await execa('/usr/bin/python3', ['-c', py]);
  return JSON.parse(stdout);
}
